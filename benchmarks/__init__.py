"""Speed measurements, each workload beside its baseline; run from the repository root.

    python -m benchmarks.run [--quick | --smoke | --gpu]   # every workload, one table
    python -m benchmarks.encode                            # one workload, its own table
    python -m benchmarks.train_step | generate | llava_tower | flops

Modules: ``common`` (the timing helper and the table printer), one module per workload, and
``run`` (all of them in one process and one table). They use the package's public API only.
"""
