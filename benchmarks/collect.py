"""Assemble docs/benchmarks.md from the sections the benchmark scripts write (docs/bench_*.md).

    python benchmarks/collect.py
"""
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
ORDER = ["segment", "finetune", "vae", "diffusion", "gan", "sequence", "classify", "cohort", "responsiveness"]
HEADER = """# Benchmarks

Measured figures, each from one run of the script named in its section (`benchmarks/bench_*.py`),
on this project's development machine: 2 CPU cores shared with other work, no GPU in the session
that produced them (so there are no absolute GPU timings). Speed figures are ratios against a
baseline measured in the same run; quality figures compare against a simple baseline in the same
run. Re-run a script to refresh its section, then `python benchmarks/collect.py`.
"""


def main() -> None:
    parts = [HEADER]
    for name in ORDER:
        section = DOCS / f"bench_{name}.md"
        if section.exists():
            parts.append(section.read_text().strip() + "\n")
    (DOCS / "benchmarks.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
