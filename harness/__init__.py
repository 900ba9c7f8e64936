"""Real processes for tests and benchmarks: TorchServe, fresh PostgreSQL databases and Redis
indexes, whole service stacks. Neither a test module nor part of the product: tests and
``bench/`` both import it (bench never imports tests)."""
