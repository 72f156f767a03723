"""What `python -m nbconv bench --json FILE` records of a run."""
import json
from types import SimpleNamespace

from nbconv.tools import bench


def test_the_experiment_is_read_before_the_results_file_is_emptied(tmp_path, monkeypatch):
    """The commit (``git describe --dirty``) is read while a checkout's own results file still holds
    what it held: emptied first, it read "dirty"."""
    path = tmp_path / "results.json"
    path.write_text("the earlier run")

    def experiment(argv):
        assert path.read_text() == "the earlier run"
        return {"commit": "abc1234", "command": " ".join(argv)}
    monkeypatch.setattr(bench, "experiment", experiment)
    args = SimpleNamespace(json=str(path), threads=2, set="public")
    bench.write_json(args, ["--json", str(path)], 230.0, [{"workload": "dense_c64", "nbconv": 240.0}], backward=False)
    written = json.loads(path.read_text())
    assert written["commit"] == "abc1234" and written["rows"] == [{"workload": "dense_c64", "nbconv": 240.0}]
