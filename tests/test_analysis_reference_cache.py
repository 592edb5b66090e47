"""wdiv.analysis_reference_cache: a reference's Outcome kept once for the jobs of one command."""

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pandas as pd

from wdiv.analysis_args import build_parser, check_args
from wdiv.analysis_outputs import Outcome
from wdiv.analysis_reference_cache import reference_key, shared_reference

REF = Path("ref/model.safetensors")


def _opts(*flags):
    return check_args(build_parser().parse_args(["zoo", *flags]))


def _counting(outcome: Outcome):
    calls = []

    def analyse():
        calls.append(1)
        return outcome

    return analyse, calls


def _outcome() -> Outcome:
    return Outcome(df=pd.DataFrame({"longname": ["fc1", "fc2"], "alpha": [2.5, np.nan]}),
                   errors=["ref/model.safetensors: layer fc2: fit failed"], esd={"fc1": np.array([0.5, 1.25])})


def test_a_kept_reference_is_read_back_exactly_and_not_analysed_again(tmp_path):
    opts = _opts()
    analyse, calls = _counting(_outcome())
    first = shared_reference(tmp_path, REF, "ab" * 32, opts, True, True, analyse)
    again = shared_reference(tmp_path, REF, "ab" * 32, opts, True, True, analyse)
    assert calls == [1]
    assert again is not first and again.df.equals(first.df) and again.errors == first.errors
    assert again.esd.keys() == first.esd.keys() and np.array_equal(again.esd["fc1"], first.esd["fc1"])
    assert [p.name for p in tmp_path.glob("*.pkl")] == [f"{reference_key(REF, 'ab' * 32, opts, True, True)}.pkl"]


def test_what_changes_a_reference_outcome_changes_its_key():
    opts = _opts()
    key = reference_key(REF, "ab" * 32, opts, False, True)
    others = [reference_key(REF, "cd" * 32, opts, False, True),
              reference_key(REF, "ab" * 32, _opts("--fit", "hill"), False, True),
              reference_key(REF, "ab" * 32, opts, True, True), reference_key(REF, "ab" * 32, opts, False, False),
              reference_key(Path("other/model.safetensors"), "ab" * 32, opts, False, True)]
    assert key not in others and len(set(others)) == len(others)
    assert reference_key(REF, "ab" * 32, _opts(), False, True) == key  # the same options: the same key


def test_a_damaged_or_foreign_file_is_analysed_again_and_replaced(tmp_path, caplog):
    opts = _opts()
    path = tmp_path / f"{reference_key(REF, 'ab' * 32, opts, False, False)}.pkl"
    for junk in (b"", b"not a kept outcome", None):
        if junk is None:  # a well-formed file of something else
            shared_reference(tmp_path, REF, "ab" * 32, opts, False, False, lambda: _outcome())
            data = path.read_bytes()
            payload = pickle.dumps({"not": "an outcome"})
            junk = data[:data.index(b"\n") + 1] + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
        path.write_bytes(junk)
        analyse, calls = _counting(_outcome())
        caplog.clear()
        got = shared_reference(tmp_path, REF, "ab" * 32, opts, False, False, analyse)
        assert calls == [1] and got.df is not None
        assert f"{path}: " in caplog.text and "the reference ref/model.safetensors is analysed again" in caplog.text
        assert path.read_bytes() != junk
        analyse, calls = _counting(_outcome())
        shared_reference(tmp_path, REF, "ab" * 32, opts, False, False, analyse)
        assert calls == []  # the replacement is read back


def test_a_failed_reference_is_not_kept(tmp_path):
    opts = _opts()
    failed = Outcome(errors=["ref/model.safetensors: not a safetensors or PyTorch file"])
    analyse, calls = _counting(failed)
    assert shared_reference(tmp_path, REF, "ab" * 32, opts, False, False, analyse) is failed
    assert shared_reference(tmp_path, REF, "ab" * 32, opts, False, False, analyse) is failed
    assert calls == [1, 1] and not list(tmp_path.glob("*.pkl"))
