"""The orchestration of ``python -m bench run`` and ``remeasure``: the plan (``plan``), the
invocation's bookkeeping in the store (``ledger``), the execution loop (``runner``), where runs
execute (``executors``), what travels to a worker (``job``), one run in a worker (``worker``),
the progress display (``progress``) and re-measuring stored runs (``remeasure``)."""
