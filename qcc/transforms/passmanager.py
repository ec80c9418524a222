"""Passes, pipelines and the pass manager.

A pass is a small dataclass whose fields are its options, with a kebab-case
``name``, a docstring that shows IR before and after, and one method::

    @register_pass
    @dataclass
    class Calibrate(Pass):
        '''Record activation ranges. (before/after example here)'''
        name = "calibrate"
        method: str = "minmax"
        p: float = 99.99

        def run(self, graph) -> PassResult: ...

A pipeline is text: ``fold-batchnorm,calibrate{method=percentile,p=99.99}``.
Option values are typed by the dataclass fields (int, float, bool, str,
``Literal[...]`` choices, and lists written ``[a,b]``). Named pipelines
(``register_pipeline``) expand to lists of passes and take options the same way.

``PassManager.run`` verifies the graph before the first pass and after every
pass; a failure raises ``PassError`` naming the failing pass and the passes
that ran before it. Built-in passes live in ``qcc.passes`` and load on the
first registry lookup (core never imports them statically); third-party
passes load from a file (``load_pass_plugin``) or from the ``qcc.passes``
entry-point group of installed distributions.

Pipeline syntax and option typing (text to values, no registry) live in
``qcc.transforms.pipeline_text``; the names callers use are re-exported here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Optional, Sequence, TextIO, Union

from qcc.errors import InputError, PassError, QccError
from qcc.ir.graph import Graph
from qcc.transforms.pipeline_text import (_NO_DEFAULT, PipelineError, _convert, _describe_options, _field_default,
                            _format_option, _parse_item, _split_top, _type_name, describe_pass_options,
                            option_types)

# Names other modules import from here; some are defined in qcc.transforms.pipeline_text.
__all__ = ["Pass", "PassResult", "Pipeline", "PipelineError", "PassManager", "PassRecord", "PipelineReport",
           "register_pass", "register_pipeline", "registered_passes", "registered_pipelines", "get_pass",
           "make_pass", "parse_pipeline", "option_types", "describe_pass_options", "_type_name",
           "load_pass_plugin", "load_entry_point_plugins", "scoped_registry", "ir_header"]

_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass
class PassResult:
    """What a pass did: whether it changed the graph, and counters for tests and reports."""

    modified: bool
    stats: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Pass:
    """Base of every pass. Subclasses are dataclasses; their fields are the options."""

    name: ClassVar[str] = ""

    def run(self, graph: Graph) -> PassResult:
        raise NotImplementedError(f"pass '{self.name}' does not implement run()")

    @classmethod
    def summary(cls) -> str:
        """The first line of the docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0].strip() if doc else ""

    @classmethod
    def option_fields(cls) -> List[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.init]

    def spec(self) -> str:
        """This pass as pipeline text; only options that differ from their default are shown."""
        parts = []
        for f in self.option_fields():
            value = getattr(self, f.name)
            if _field_default(f) is not _NO_DEFAULT and value == _field_default(f):
                continue
            parts.append(f"{f.name}={_format_option(value)}")
        return self.name + ("{" + ",".join(parts) + "}" if parts else "")


# ---------------------------------------------------------------- registries
_PASSES: Dict[str, type] = {}


@dataclass(frozen=True)
class Pipeline:
    """A named pipeline: ``builder(options: dict) -> [pass spec or Pass]``."""

    name: str
    builder: Callable[[Dict[str, Any]], Sequence[Union[str, Pass]]]
    summary: str
    options: Dict[str, Any]  # option name -> type (values are converted before the builder runs)


_PIPELINES: Dict[str, Pipeline] = {}


def register_pass(cls: type) -> type:
    """Class decorator: register a pass under its ``name`` (made a dataclass if it is not one)."""
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise TypeError(f"@register_pass needs a subclass of qcc.Pass, got {cls!r}")
    if "__dataclass_fields__" not in cls.__dict__:
        cls = dataclass(cls)
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not _KEBAB.match(name):
        raise TypeError(f"pass class {cls.__qualname__} needs a kebab-case class attribute "
                        f"`name` (like \"fold-batchnorm\"), got {name!r}")
    if any(f.name == "name" for f in dataclasses.fields(cls)):
        raise TypeError(f"pass {cls.__qualname__}: `name` must be a plain class attribute, not a field")
    _check_unique(name, cls.__module__)
    _PASSES[name] = cls
    return cls


def register_pipeline(name: str, builder: Callable[[Dict[str, Any]], Sequence[Union[str, Pass]]],
                      summary: str, options: Optional[Dict[str, Any]] = None) -> Pipeline:
    """Register a named pipeline. ``options`` maps option names to types (int, float, ...)."""
    if not _KEBAB.match(name):
        raise TypeError(f"pipeline name must be kebab-case, got {name!r}")
    _check_unique(name, getattr(builder, "__module__", "?"))
    pipeline = Pipeline(name, builder, summary, dict(options or {}))
    _PIPELINES[name] = pipeline
    return pipeline


def _check_unique(name: str, module: str):
    if name in _PASSES:
        raise PipelineError(f"cannot register '{name}' from module {module}: a pass of that name "
                            f"is already registered by {_PASSES[name].__module__}")
    if name in _PIPELINES:
        raise PipelineError(f"cannot register '{name}' from module {module}: a pipeline of that "
                            f"name is already registered")


_builtins_loaded = False
_entry_points_loaded = False
_plugin_files: Dict[Path, List[str]] = {}


def _load_registered():
    """Import the built-in passes and the entry-point plugins, once."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        importlib.import_module("qcc.passes")  # built-ins register on import
    load_entry_point_plugins()


def load_entry_point_plugins(entry_points: Optional[Iterable] = None) -> List[str]:
    """Load each entry point of the ``qcc.passes`` group once; returns the names they registered.

    An entry point may name a module (importing it registers its passes) or a
    ``Pass`` subclass (registered here if it is not already).
    """
    global _entry_points_loaded
    if entry_points is None:
        if _entry_points_loaded:
            return []
        _entry_points_loaded = True
        from importlib.metadata import entry_points as _eps
        entry_points = _eps(group="qcc.passes")
    if not _builtins_loaded:
        _load_registered()
    before = set(_PASSES) | set(_PIPELINES)
    for ep in entry_points:
        dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed distribution"
        try:
            obj = ep.load()
        except Exception as e:
            raise PipelineError(f"cannot load pass plugin entry point '{ep.name} = {ep.value}' "
                                f"from {dist}: {type(e).__name__}: {e}") from None
        if isinstance(obj, type) and issubclass(obj, Pass) and _PASSES.get(obj.name) is not obj:
            register_pass(obj)
    return sorted((set(_PASSES) | set(_PIPELINES)) - before)


def load_pass_plugin(path) -> List[str]:
    """Import a ``.py`` file that registers passes; returns the names it registered.

    Loading the same file twice is a no-op (it returns the same names).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pass plugin '{path}' does not exist")
    if path.suffix != ".py":
        raise InputError(f"pass plugin '{path}' is not a Python file (.py)")
    key = path.resolve()
    if key in _plugin_files:
        return list(_plugin_files[key])
    _load_registered()  # so a clash with a built-in name is reported against the plugin
    before = set(_PASSES) | set(_PIPELINES)
    digest = hashlib.sha1(str(key).encode()).hexdigest()[:10]
    module_name = f"qcc_plugin_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, key)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and type hints look the module up
    try:
        spec.loader.exec_module(module)
    except QccError as e:
        sys.modules.pop(module_name, None)
        raise InputError(f"cannot load pass plugin '{path}': {e}") from None
    except Exception as e:
        sys.modules.pop(module_name, None)
        where = ""
        if isinstance(e, SyntaxError) and e.lineno:
            where = f":{e.lineno}"
        raise InputError(f"cannot load pass plugin '{path}{where}': {type(e).__name__}: {e}") from None
    names = sorted((set(_PASSES) | set(_PIPELINES)) - before)
    _plugin_files[key] = names
    return names


@contextlib.contextmanager
def scoped_registry():
    """Undo every pass, pipeline and plugin file registered inside the block (for tests)."""
    _load_registered()
    saved = dict(_PASSES), dict(_PIPELINES), dict(_plugin_files)
    try:
        yield
    finally:
        for live, old in zip((_PASSES, _PIPELINES, _plugin_files), saved):
            live.clear()
            live.update(old)


def registered_passes() -> Dict[str, type]:
    _load_registered()
    return dict(sorted(_PASSES.items()))


def registered_pipelines() -> Dict[str, Pipeline]:
    _load_registered()
    return dict(sorted(_PIPELINES.items()))


def get_pass(name: str) -> type:
    _load_registered()
    if name not in _PASSES:
        raise PipelineError(f"unknown pass '{name}'; {_known_names()}")
    return _PASSES[name]


def _known_names() -> str:
    passes = ", ".join(sorted(_PASSES)) or "none"
    pipelines = ", ".join(sorted(_PIPELINES)) or "none"
    return f"registered passes: {passes}; pipelines: {pipelines}"


# ---------------------------------------------------------------- pipelines from text
def make_pass(name: str, options: Optional[Dict[str, str]] = None) -> Pass:
    """Instantiate a registered pass from option text (``max-elements`` also names ``max_elements``)."""
    cls = get_pass(name)
    types = option_types(cls)
    kwargs = {}
    for key, text in (options or {}).items():
        if key not in types and key.replace("-", "_") in types:
            key = key.replace("-", "_")
        if key not in types:
            raise PipelineError(f"pass '{name}' has no option '{key}'; {_describe_options(types)}")
        kwargs[key] = _convert(text, types[key], f"option '{key}' of pass '{name}'")
    try:
        return cls(**kwargs)
    except QccError:
        raise
    except (TypeError, ValueError) as e:
        raise PipelineError(f"bad options for pass '{name}': {e}") from None


def parse_pipeline(text: str, _depth: int = 0) -> List[Pass]:
    """Pass instances for a pipeline string; named pipelines are expanded."""
    if _depth > 16:
        raise PipelineError("pipelines nest more than 16 deep (a pipeline that includes itself?)")
    _load_registered()
    where = f"pipeline '{text if len(text) <= 120 else text[:100] + '...'}'"
    passes: List[Pass] = []
    if not text.strip():
        return passes
    for item in _split_top(text, ",", where):
        if not item.strip():
            raise PipelineError(f"empty element in {where}")
        name, options = _parse_item(item, where)
        if name in _PIPELINES:
            passes.extend(_expand_pipeline(_PIPELINES[name], options, _depth))
        else:
            passes.append(make_pass(name, options))
    return passes


def _expand_pipeline(p: Pipeline, options: Dict[str, str], depth: int) -> List[Pass]:
    values = {}
    for key, text in options.items():
        if key not in p.options and key.replace("-", "_") in p.options:
            key = key.replace("-", "_")
        if key not in p.options:
            raise PipelineError(f"pipeline '{p.name}' has no option '{key}'; {_describe_options(p.options)}")
        values[key] = _convert(text, p.options[key], f"option '{key}' of pipeline '{p.name}'")
    out: List[Pass] = []
    try:
        for spec in p.builder(values):
            if isinstance(spec, Pass):
                out.append(spec)
            else:
                out.extend(parse_pipeline(spec, depth + 1))
    except PipelineError as e:  # a pass built from the pipeline's options: say which pipeline set them
        given = ",".join(f"{k}={v}" for k, v in options.items())
        prefix = f"in pipeline '{p.name}" + (f"{{{given}}}" if given else "") + "': "
        raise PipelineError(str(e) if str(e).startswith("in pipeline") else prefix + str(e)) from None
    return out


# ---------------------------------------------------------------- the manager
@dataclass
class PassRecord:
    """One pass run: the pass, its result and how long it took."""

    pass_: Pass
    result: PassResult
    seconds: float


@dataclass
class PipelineReport:
    records: List[PassRecord] = field(default_factory=list)

    @property
    def modified(self) -> bool:
        return any(r.result.modified for r in self.records)

    def stats(self) -> Dict[str, Dict[str, Any]]:
        """Per-pass stats keyed ``"<index>:<pass spec>"`` (a pass may run twice)."""
        return {f"{i}:{r.pass_.spec()}": dict(r.result.stats) for i, r in enumerate(self.records)}

    def format_timing(self) -> str:
        total = sum(r.seconds for r in self.records) or 1e-12
        lines = ["// pass timing (wall clock)"]
        for r in self.records:
            lines.append(f"//   {r.seconds * 1e3:9.3f} ms {100 * r.seconds / total:5.1f}%  {r.pass_.spec()}")
        lines.append(f"//   {total * 1e3:9.3f} ms total")
        return "\n".join(lines) + "\n"


def ir_header(spec: str) -> str:
    return f"// -----// IR after {spec} //----- //"


class PassManager:
    """Runs passes in order, verifying the graph before the first and after every pass."""

    def __init__(self, passes: Sequence[Pass] = (), *, verify: bool = True,
                 print_ir_after_all: bool = False, print_ir_after: Iterable[str] = (),
                 stream: Optional[TextIO] = None, elide_over: Optional[int] = 16):
        self.passes: List[Pass] = list(passes)
        self.verify = verify
        self.print_ir_after_all = print_ir_after_all
        self.print_ir_after = set(print_ir_after)
        self.stream = stream
        self.elide_over = elide_over
        if self.print_ir_after:
            known = registered_passes()
            unknown = sorted(n for n in self.print_ir_after if n not in known)
            if unknown:
                raise PipelineError(f"--print-ir-after names unknown pass "
                                    f"{', '.join(repr(n) for n in unknown)}; {_known_names()}")

    @classmethod
    def parse(cls, pipeline: str, **options) -> "PassManager":
        return cls(parse_pipeline(pipeline), **options)

    def add(self, p: Union[Pass, str]) -> "PassManager":
        self.passes.extend(parse_pipeline(p) if isinstance(p, str) else [p])
        return self

    def pipeline(self) -> str:
        return ",".join(p.spec() for p in self.passes)

    def run(self, graph: Graph, before_pass: Optional[Callable[[Pass, Graph], None]] = None) -> PipelineReport:
        """Run every pass on ``graph``; ``before_pass(pass, graph)``, when given, sees each pass's input."""
        report = PipelineReport()
        if self.verify:
            try:
                graph.verify()
            except QccError as e:
                raise PassError(f"the input graph @{graph.name} is invalid before any pass ran: {e}") from None
        for p in self.passes:
            if before_pass is not None:
                before_pass(p, graph)
            start = time.perf_counter()
            result = self._run_one(p, graph, report)
            report.records.append(PassRecord(p, result, time.perf_counter() - start))
            if self.verify:
                try:
                    graph.verify()
                except QccError as e:
                    raise PassError(f"pass '{p.spec()}' left an invalid graph{self._after(report, True)}: "
                                    f"{e}") from None
            if self.print_ir_after_all or p.name in self.print_ir_after:
                self._print_ir(graph, p.spec())
        return report

    def _run_one(self, p: Pass, graph: Graph, report: PipelineReport) -> PassResult:
        try:
            result = p.run(graph)
        except PassError as e:
            err = PassError(f"pass '{p.spec()}' failed{self._after(report)}: {e}")
            err.exit_code = e.exit_code
            raise err from None
        except QccError as e:
            err = PassError(f"pass '{p.spec()}' failed{self._after(report)}: {e}")
            err.exit_code = e.exit_code  # an unsupported model stays exit code 2
            raise err from None
        except Exception as e:  # a bug in the pass: keep the traceback, add where it happened
            e.add_note(f"while running pass '{p.spec()}'{self._after(report)}")
            raise
        if not isinstance(result, PassResult):
            raise PassError(f"pass '{p.spec()}' returned {type(result).__name__}, expected a PassResult")
        return result

    @staticmethod
    def _after(report: PipelineReport, include_self: bool = False) -> str:
        records = report.records[:-1] if include_self else report.records
        if not records:
            return " (it ran first)"
        return " (after " + ", ".join(r.pass_.spec() for r in records) + ")"

    def _print_ir(self, graph: Graph, spec: str):
        from qcc.ir.printer import print_graph
        stream = self.stream if self.stream is not None else sys.stderr
        stream.write(ir_header(spec) + "\n")
        stream.write(print_graph(graph, elide_over=self.elide_over))
        stream.write("\n")
        stream.flush()
