"""``executor="ray"`` as described: option checks, the missing-Ray error, and that ``import
reflux`` never imports Ray.  None of this needs a Ray cluster; the tests that need Ray itself
installed say so (the default CI leg runs without it)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from reflux import Filter, Pipeline, Transformer, ValidationError
from reflux.describe import executors

HAS_RAY = importlib.util.find_spec("ray") is not None


@pytest.fixture
def ray_present(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Option checks run as if Ray were installed (they never import it)."""
    monkeypatch.setattr(executors, "ray_installed", lambda: True)
    yield


def _run(code: str) -> subprocess.CompletedProcess[str]:
    # not from the checkout, whose uncompiled reflux_core/ would shadow the installed one
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=tempfile.gettempdir())


def test_without_ray_the_error_names_the_node_and_the_extra() -> None:
    code = ("import sys\n"
            "sys.modules['ray'] = None  # as if Ray were not installed\n"
            "from reflux import Filter, Pipeline, Transformer, ValidationError\n"
            "for make in (lambda: Transformer(abs, executor='ray', name='score'),\n"
            "             lambda: Filter(bool, executor='ray', name='keep'),\n"
            "             lambda: Pipeline(executor='ray', name='p')):\n"
            "    try:\n"
            "        make()\n"
            "    except ValidationError as e:\n"
            "        print(e)\n")
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == [
        "Transformer 'score': executor='ray' needs Ray, which is not installed; install it with: "
        'pip install "pyreflux[ray]"',
        "Filter 'keep': executor='ray' needs Ray, which is not installed; install it with: "
        'pip install "pyreflux[ray]"',
        "Pipeline 'p': executor='ray' needs Ray, which is not installed; install it with: "
        'pip install "pyreflux[ray]"',
    ]


def test_import_reflux_never_imports_ray() -> None:
    code = ("import sys\n"
            "import reflux\n"
            "from reflux import Transformer, Filter, RayWorkerError, WorkerStats, Pipeline\n"
            f"if {HAS_RAY}:\n"
            "    from reflux import Extractor, Loader\n"
            "    t = Transformer(abs, executor='ray', workers=2, ray_options={'num_cpus': 1})\n"
            "    p = Pipeline(Extractor([1]) >> t >> Filter(bool, executor='ray') >> Loader.to_list(),\n"
            "                 ray_init={'num_cpus': 2})\n"
            "    p.compile(), p.to_mermaid(), p.stats()\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n"
            "print('ok')\n")
    proc = _run(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.usefixtures("ray_present")
class TestOptions:
    def test_a_ray_node_keeps_its_options(self) -> None:
        t = Transformer(abs, executor="ray", workers=3, ray_options={"num_cpus": 0.5, "resources": {"gpu_box": 1},
                                                                      "max_restarts": 2, "runtime_env": {}})
        assert (t.executor, t.workers, t.ordered) == ("ray", 3, True)
        assert t.ray_options == {"num_cpus": 0.5, "resources": {"gpu_box": 1}, "max_restarts": 2, "runtime_env": {}}
        f = Filter(bool, executor="ray")
        assert (f.executor, f.workers, f.ordered, f.ray_options) == ("ray", None, True, {})
        assert Transformer(abs, executor="ray", ordered=False).ordered is False
        assert Filter(bool).ordered is False  # thread replicas: completion order unless asked

    @pytest.mark.parametrize("kwargs,message", [
        ({"ray_options": {"name": "x"}}, "Transformer 't': ray_options has an unknown or unsupported option 'name'"),
        ({"ray_options": {"lifetime": "detached"}}, "unsupported option 'lifetime'"),
        ({"ray_options": {"num_cpus": -1}}, "ray_options\\['num_cpus'\\] must be a number >= 0, got -1"),
        ({"ray_options": {"num_gpus": "1"}}, "ray_options\\['num_gpus'\\] must be a number >= 0"),
        ({"ray_options": {"max_restarts": 1.5}}, "ray_options\\['max_restarts'\\] must be an integer >= -1"),
        ({"ray_options": {"max_restarts": -2}}, "must be an integer >= -1, got -2"),
        ({"ray_options": {"resources": {"CPU": 1}}}, "cannot set 'CPU'; use num_cpus"),
        ({"ray_options": {"resources": ["a"]}}, "must be a dict of resource name to amount"),
        ({"ray_options": {"resources": {"a": -1}}}, "must be a number >= 0"),
        ({"ray_options": {"runtime_env": "env"}}, "ray_options\\['runtime_env'\\] must be a dict"),
        ({"ray_options": [("num_cpus", 1)]}, "ray_options must be a dict of Ray actor options"),
        ({"workers": 0}, "workers must be a positive integer, got 0"),
        ({"workers": True}, "workers must be a positive integer"),
        ({"parallel": 2}, "parallel= runs replicas in threads; with executor='ray' set the number of actors "
                          "with workers="),
        ({"start_method": "fork"}, "start_method= needs executor='process'"),
    ])
    def test_bad_options_are_refused_naming_the_node(self, kwargs: dict, message: str) -> None:
        with pytest.raises(ValidationError, match=message):
            Transformer(abs, executor="ray", name="t", **kwargs)

    def test_options_that_need_the_ray_executor(self) -> None:
        with pytest.raises(ValidationError, match="Transformer 'abs': ray_options= needs executor='ray'"):
            Transformer(abs, ray_options={"num_cpus": 1})
        with pytest.raises(ValidationError, match="Filter 'bool': workers= needs executor='process' or 'ray'"):
            Filter(bool, workers=2)
        with pytest.raises(ValidationError, match="Filter 'bool': executor must be one of 'thread', 'ray', "
                                                  "got 'process'"):
            Filter(bool, executor="process")
        with pytest.raises(ValidationError, match="Filter 'bool': executor='ray' runs a plain predicate in Ray actors"):
            Filter(bool, executor="ray", parallel=2)

    def test_pipeline_ray_init_must_be_a_dict(self) -> None:
        assert Pipeline(ray_init={"address": "auto"}).ray_init == {"address": "auto"}
        with pytest.raises(ValidationError, match="Pipeline 'p': ray_init must be a dict of keyword arguments"):
            Pipeline(name="p", ray_init="auto")

    def test_pipeline_default_executor_ray_applies_to_plain_transformers(self) -> None:
        from reflux import Extractor, Loader
        plain, replicas = Transformer(abs, name="plain"), Transformer(abs, name="reps", parallel=2)
        p = Pipeline(Extractor([1]) >> plain >> replicas >> Filter(bool, name="keep") >> Loader.to_list(),
                     executor="ray")
        p.compile()
        assert (plain.executor, plain.ordered) == ("ray", True)
        assert replicas.executor == "thread" and p["keep"].executor == "thread"
