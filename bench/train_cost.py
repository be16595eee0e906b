"""What the training spool costs: the job's writer per record, and the exporter's reader per round and
per scrape with 8 ranks stepping 10 times a second (what a p5 node's 8 ranks write at most in a
1-second round, with every field a record can carry).

    python -m bench.train_cost [--records 20000] [--rounds 5]

The spool goes to /dev/shm (tmpfs) as docs/training.md advises; the figures are process CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from exporter.collectors.train import SpoolReader, TrainCollector, TrainOptions
from gpuscope_train import StepWriter

RANKS, STEPS_PER_ROUND = 8, 10


def record(steps: StepWriter, step: int) -> None:
    steps.step(step, 0.512, tokens=4096 * 8, samples=8, loss=2.31, grad_norm=0.8, flops=3.2e15,
               data_wait=0.01, compute=0.45, optimizer=0.05, other=0.002)


def writer_us(records: int) -> float:
    """CPU microseconds per record, one rank writing `records` records."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        steps = StepWriter(job="1", rank=0, local_rank=0, gpu="GPU-0", directory=folder)
        start = time.process_time()
        for step in range(records):
            record(steps, step)
        return (time.process_time() - start) / records * 1e6


def reader_ms(rounds: int) -> tuple[float, float]:
    """CPU milliseconds per reading round (8 ranks, 10 new records each) and per scrape."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        writers = [StepWriter(job="1", rank=r, local_rank=r, gpu=str(r), directory=folder) for r in range(RANKS)]
        spool = SpoolReader(TrainOptions(folder))
        collector = TrainCollector(TrainOptions(folder), spool)
        read = scrape = 0.0
        for round_ in range(rounds):
            for steps in writers:
                for step in range(STEPS_PER_ROUND):
                    record(steps, round_ * STEPS_PER_ROUND + step)
            start = time.process_time()
            spool.read_round()
            read += time.process_time() - start
            start = time.process_time()
            list(collector.collect())
            scrape += time.process_time() - start
        return read / rounds * 1000, scrape / rounds * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    writes = [writer_us(args.records) for _ in range(args.rounds)]
    reads = [reader_ms(200) for _ in range(args.rounds)]
    print(f"writer, per record: {min(writes):.1f} / {statistics.median(writes):.1f} / {max(writes):.1f} us "
          f"(min / median / max of {args.rounds} runs of {args.records} records)")
    for name, figures in (("reader, per round (8 ranks x 10 records)", [r for r, _ in reads]),
                          ("reader, per scrape (8 ranks)", [s for _, s in reads])):
        print(f"{name}: {min(figures):.3f} / {statistics.median(figures):.3f} / {max(figures):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
