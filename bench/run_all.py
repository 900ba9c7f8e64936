"""Run every benchmark; each prints ratios against a baseline measured in the same process."""

from __future__ import annotations

from bench import (
    bench_cnn,
    bench_diagnose,
    bench_native,
    bench_preprocess,
    bench_service,
    bench_upload,
)


def main() -> None:
    for name, module in (
        ("preprocess", bench_preprocess),
        ("native", bench_native),
        ("cnn", bench_cnn),
        ("diagnose", bench_diagnose),
        ("upload", bench_upload),
        ("service", bench_service),
    ):
        print(f"== {name}")
        module.main()


if __name__ == "__main__":
    main()
