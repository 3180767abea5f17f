"""The ``slurm`` executor: one Slurm job array per verification, through submitit.

The instances are cut into chunks (grouped by ONNX file, ``--chunk-size`` each; default:
the backend's own chunk size, else 16) and submitted as ONE job array; array task k runs
:func:`usnprune.driver.worker.run_chunk` on chunk k -- the same worker code as the local
executors -- and appends its rows to the run folder's results store as
``RUN/results/slurm-<arrayid>_<k>.jsonl``. The run folder must
therefore be on a filesystem the compute nodes share with the submit host.

While the array runs, the submit process shows how many tasks are pending / running /
done / failed (from sacct, else squeue) and a progress bar of finished instances read from the store. A task that
fails, is cancelled, hits its time limit or runs out of memory leaves the instances it
had not finished without a row (never an ``error`` row it did not earn): the run ends
with "N missing", a message per failed task says why (its state and the tail of its
stderr), and ``--resume`` submits only the instances without a row.

Each submission gets its own submitit folder ``RUN/logs/slurm/<time>-<random>/`` (the
task logs ``<arrayid>_<k>_0_log.{out,err}`` are there), so a job id reused by a cluster
whose ids restarted can never hand back a stale result.

Options (``--partition`` ... on the command line, ``verify.executor_options`` in an
experiment YAML; any other key is passed to sbatch as ``--key=value``): see
:class:`SlurmOptions` and docs/cluster.md.
"""


from .cluster import check_cluster, check_run_folder, preflight, test_submission, warn_if_local
from .options import SlurmOptions, parse_options, sbatch_options
from .submit import DEFAULT_CHUNK, default_time_min, run_slurm
from .task import run_task

__all__ = ["DEFAULT_CHUNK", "SlurmOptions", "check_cluster", "check_run_folder", "default_time_min", "parse_options",
           "preflight", "run_slurm", "run_task", "sbatch_options", "test_submission", "warn_if_local"]
