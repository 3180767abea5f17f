"""usnprune's driver: the command line, whole-pipeline runs, executors, results, reports."""
