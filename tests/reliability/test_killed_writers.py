"""A process SIGKILLed while it writes leaves nothing that a later stage reads as complete: tables
are written to a temporary name and renamed into place, factor folders get their meta.json last."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from snakemake_runs import wait_for

from tracinflow.io.factor_store import load_factor_dir


def start_writer(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)])


def kill_when(process: subprocess.Popen, condition, what: str) -> None:
    wait_for(condition, what, process, timeout=120)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def test_a_table_writer_killed_mid_write_leaves_no_table(tmp_path):
    out = tmp_path / "shard.parquet"
    writer = start_writer(f"""
        import numpy as np, pandas as pd
        from tracinflow._util.files import write_parquet
        frame = pd.DataFrame({{"influence": np.random.default_rng(0).random(30_000_000)}})
        write_parquet({str(out)!r}, frame)
    """)

    def half_written() -> bool:  # the temporary file has rows in it, the table is not in place
        return any(p.stat().st_size > 1_000_000 for p in tmp_path.glob(".shard.parquet.*.tmp"))

    kill_when(writer, half_written, "the table's first rows")
    assert not out.exists()
    with pytest.raises(FileNotFoundError):
        pd.read_parquet(out)


def test_a_factor_writer_killed_mid_folder_leaves_a_folder_no_stage_reads(tmp_path):
    folder = tmp_path / "factors/epoch_003/train"
    writer = start_writer(f"""
        import numpy as np
        from tracinflow.io.factor_store import FactorWriter
        rng = np.random.default_rng(0)
        with FactorWriter({str(folder)!r}, 100_000, {{"fc.4": (64, 10)}}, 10) as out:
            for start in range(0, 100_000, 100):
                out.write({{"fc.4": rng.random((100, 64))}}, {{"fc.4": rng.random((100, 10))}},
                          np.zeros(100, np.int64), rng.random((100, 10)), np.arange(start, start + 100))
            out.close({{"epoch": 3}})
    """)

    def half_written() -> bool:
        return any(p.stat().st_size > 1_000_000 for p in folder.glob(".*.tmp"))

    kill_when(writer, half_written, "the folder's first rows")
    assert not (folder / "meta.json").exists()
    with pytest.raises(FileNotFoundError, match="the factor folder is missing or incomplete"):
        load_factor_dir(folder)
    assert not [p.name for p in Path(folder).iterdir() if p.suffix == ".npy"]
