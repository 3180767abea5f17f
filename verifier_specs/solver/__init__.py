"""``usnprune-solver``: the builtin verifier behind the VNN-LIB 2.0 standard's command line.

Laid out like the standard's chapter 5 and the ``vnnlib-test-solver`` house it imitates:
``spec`` (every spelling the standard defines, in its order), ``cli`` (the only module
writing stdout: parsing, dispatch, output), ``capabilities`` (the answers of ``supports``),
``verify`` (section 5.3: the query, 5.3.2's checks, the builtin's branch and bound),
``assignment`` (section 5.3.1's format, written and read), ``lift`` (ONNX models in the
form the bound engine reads). See docs/verifiers.md.
"""
