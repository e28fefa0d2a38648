"""Command-line handling shared by `python -m fiat_t5x.train|eval|infer`, T5X style.

--gin_file=PATH          (repeatable; searched in --gin_search_paths, fiat-t5x's gin/, and .)
--gin.NAME=VALUE         a gin binding, e.g. --gin.MODEL_DIR="'/tmp/run'" --gin.TRAIN_STEPS=100
                         (string values keep their inner quotes)
--gin_search_paths=A,B   extra directories for gin files and their includes
--debug                  show the traceback of an error (or set FIAT_T5X_DEBUG=1)

A `--gin.NAME=` macro that no loaded gin file reads (or sets: a dataset file sets macros that
only some of its ablation steps read) is refused with the closest names, and so is a `%NAME`
that a file reads but nothing sets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import tokenize
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gin
from fiat_t5x import errors, gin_assignments, gin_files, storage
from fiat_t5x.data import sources  # noqa: F401 - registers `malformed_lines` before bindings
from fiat_t5x.errors import UsageError
from fiat_t5x.training import log_noise, tf_devices

__all__ = ["GinArgs", "UsageError", "parse_args", "parse_gin", "check_macros", "run_main"]

FLAGS = ("--gin_file", "--gin_search_paths", "--gin_bindings", "--help", errors.DEBUG_FLAG)
_MACRO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MISSING_MODULE = re.compile(r"No module named ('[^']+')")
_GIN_FILE_LOCATION = re.compile(r'\n\s*In file "(?P<file>[^"]+)", line (?P<line>\d+)')
_QUOTING_HINT = (
    "string values keep their quotes inside the shell's, e.g. --gin.MODEL_DIR=\"'/tmp/run'\"; "
    "lists and dicts must be complete Python literals"
)


def _read_from_bucket(path: str) -> io.StringIO:
    return io.StringIO(storage.read_text(path))


def _is_in_bucket(path: str) -> bool:
    return storage.is_url(path) and storage.is_file(path)


# gin opens files with `open`; a run's config.gin in a bucket (eval/infer of a MODEL_DIR on
# gs://) is read through `storage` instead.
gin.config.register_file_reader(_read_from_bucket, _is_in_bucket)


@dataclasses.dataclass
class GinArgs:
    gin_files: list[str] = dataclasses.field(default_factory=list)
    bindings: list[str] = dataclasses.field(default_factory=list)
    search_paths: list[str] = dataclasses.field(default_factory=list)
    help: bool = False
    # The flag each binding came from (same order as `bindings`), for error messages.
    binding_flags: list[str] = dataclasses.field(default_factory=list)


def parse_args(argv: Sequence[str]) -> GinArgs:
    """Split argv into gin files, bindings and search paths (unknown flags are an error)."""
    args = GinArgs()
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            args.help = True
        elif arg.startswith("--gin."):
            name, sep, value = arg[len("--gin.") :].partition("=")
            if not sep or not name:
                raise UsageError(f"{arg!r}: expected --gin.NAME=VALUE, e.g. --gin.TRAIN_STEPS=100")
            args.bindings.append(f"{name} = {value}")
            args.binding_flags.append(arg)
        elif arg.split("=")[0] in ("--gin_file", "--gin_search_paths"):
            flag, sep, value = arg.partition("=")
            if not sep:
                if i + 1 >= len(argv):
                    raise UsageError(f"{flag} needs a value")
                i += 1
                value = argv[i]
            if flag == "--gin_file":
                args.gin_files.append(value)
            else:
                args.search_paths.extend(p for p in value.split(",") if p)
        elif arg.startswith("--gin_bindings="):
            args.bindings.append(arg.partition("=")[2])
            args.binding_flags.append(arg)
        else:
            flag = arg.partition("=")[0]
            raise UsageError(
                f"unknown argument {arg!r}{errors.closest(flag, FLAGS)}; use --gin_file=FILE, "
                "--gin.NAME=VALUE, --gin_search_paths=DIRS"
            )
        i += 1
    return args


def parse_gin(args: GinArgs) -> None:
    """Load the gin files, then the bindings (search paths: the given ones, fiat-t5x's gin/,
    the cwd). A gin problem becomes a UsageError naming the file and line, or the flag."""
    if not args.gin_files:
        raise UsageError("no --gin_file given; e.g. --gin_file=runs/finetune.gin")
    log_noise.install()
    gin.clear_config()
    search = gin_files.search_paths(args.search_paths)
    for path in search:
        # gin keeps its search paths across clear_config(): add each one once.
        if path not in gin.config._LOCATION_PREFIXES:
            gin.add_config_file_search_path(path)
    files = []
    for name in args.gin_files:
        found = gin_files.find(name, args.search_paths)
        if found is None:
            raise UsageError(
                f"gin file {name!r} not found here or in the search paths {search}; check the "
                "name (e.g. models/flan_t5/base.gin, runs/finetune.gin) or add --gin_search_paths"
            )
        files.append(found)
    _refuse_lost_settings(files, search)
    for file in files:
        with _gin_errors(file, None, search):
            gin.parse_config_file(file)
    flags = args.binding_flags or args.bindings
    for binding, flag in zip(args.bindings, flags, strict=True):
        with _gin_errors(None, flag, search):
            gin.parse_config(binding)


def _refuse_lost_settings(files: Sequence[str], search: Sequence[str]) -> None:
    """A model file after a file that overrides its defaults (pod.gin before xxl.gin) would
    silently undo those overrides: refuse the order, naming both lines and the fix."""
    try:
        lost = gin_assignments.lost_to_model_defaults(files, search)
    except (FileNotFoundError, SyntaxError, ValueError):
        return  # a missing include or a syntax error: gin's parse reports it with its line
    if lost:
        key, before, later = lost[0]
        others = ", ".join(k for k, _, _ in lost[1:])
        raise UsageError(
            f"{key}: {before.describe()}, but a later --gin_file loads the model's defaults and "
            f"{later.describe()}, so the earlier setting would be silently lost"
            + (f" (so would {others})" if others else "")
            + ". Give the model's --gin_file first, then the files that override it"
        )


def parse_bindings(bindings: Sequence[str], flag: str = "--gin_bindings") -> None:
    """Parse gin bindings on top of the current config; a failure names `flag` and the binding."""
    log_noise.install()
    for binding in bindings:
        with _gin_errors(None, f"{flag} {binding!r}", ()):
            gin.parse_config(binding)


def _raised_by_gin(error: BaseException) -> bool:
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename.replace("\\", "/") if tb else ""
    return f"/{gin.__name__}/" in filename


@contextlib.contextmanager
def _gin_errors(file: str | None, flag: str | None, search: Sequence[str]) -> Iterator[None]:
    """Turn what gin raises while parsing `file` (or the binding `flag`) into a UsageError."""
    try:
        yield
    except UsageError:
        raise
    except (SyntaxError, tokenize.TokenError) as e:
        if flag is not None:
            raise UsageError(f"{flag}: gin cannot parse this binding; {_QUOTING_HINT}") from e
        where = f"{getattr(e, 'filename', None) or file}:{getattr(e, 'lineno', '?')}"
        text = (getattr(e, "text", None) or "").strip()
        # gin's message for a value it cannot read quotes Python's AST; its last line says more.
        problem = str(getattr(e, "msg", e)).strip().splitlines()[-1].strip()
        raise UsageError(
            f"{where}: gin syntax error: {problem}"
            + (f" in {text!r}" if text else "")
            + " (an unclosed bracket or quote shows up on a later line)"
        ) from e
    except ModuleNotFoundError as e:
        where = _location(e, file, flag)
        module = _MISSING_MODULE.search(str(e))
        raise UsageError(
            f"{where}: cannot import {module[1] if module else repr(e.name)}: the module must be "
            "importable; run from the directory that holds it or set PYTHONPATH to that directory"
        ) from e
    except OSError as e:  # an include that is in no search path
        what = str(e).split(". Searched config paths")[0]
        raise UsageError(f"{_location(e, file, flag)}: {what}; searched {list(search)}") from e
    except Exception as e:
        if not _raised_by_gin(e):
            raise
        first = str(e).split("\n")[0]
        raise UsageError(f"{_location(e, file, flag)}: {first}") from e


def _location(error: BaseException, file: str | None, flag: str | None) -> str:
    match = _GIN_FILE_LOCATION.search(str(error))
    if match:
        return f"{match['file']}:{match['line']}"
    return flag if flag is not None else f"gin file {file}"


# ---------------------------------------------------------------------------------- macros
# gin has no public API to list bindings; its config map is read here and only here.


def macro_readers() -> dict[str, str]:
    """Macro name -> the first binding that reads it (`configurable.param` or `%OTHER`)."""
    readers: dict[str, str] = {}
    for (scope, selector), params in gin.config._CONFIG.items():
        for param, value in params.items():
            for ref in gin.config.iterate_references(value):
                if ref.selector != "gin.macro":
                    continue
                if selector == "gin.macro":
                    where = f"%{scope}"
                else:
                    where = f"{scope + '/' if scope else ''}{selector}.{param}"
                readers.setdefault("/".join(ref.scopes), where)
    return readers


def macros_set() -> set[str]:
    """Names of the macros that some file or binding sets."""
    return {scope for scope, selector in gin.config._CONFIG if selector == "gin.macro"}


def macros_set_by_files(args: GinArgs) -> set[str]:
    """Macros the loaded gin files set (read statically): a family of files shares them, e.g.
    BASE_CHECKPOINT_PATH, which the dataset file sets and only the last ablation step reads."""
    search = gin_files.search_paths(args.search_paths)
    files = [gin_files.find(name, args.search_paths) for name in args.gin_files]
    assigned = gin_assignments.last_assignments([f for f in files if f], search)
    return {key for key in assigned if _MACRO_NAME.match(key)}


def check_macros(args: GinArgs, required: Sequence[str] = ()) -> None:
    """Refuse command-line macros that no loaded file reads or sets (typos), macros that files
    read but nothing sets, and `required` macros left unset or %gin.REQUIRED."""
    readers, bound = macro_readers(), macros_set()
    known = set(readers) | bound | set(required)
    declared = macros_set_by_files(args) | set(readers) | set(required)
    flags = args.binding_flags or args.bindings
    for binding, flag in zip(args.bindings, flags, strict=True):
        name = binding.partition("=")[0].strip()
        if _MACRO_NAME.match(name) and name not in declared:
            raise UsageError(
                f"{flag}: no loaded gin file reads the macro {name}"
                f"{errors.closest(name, known - {name})}. Fix the name, or bind a parameter "
                "directly (--gin.configurable.param=VALUE)"
            )
    check_required_macros(required)
    unset = sorted(name for name in readers if name not in bound)
    if unset:
        name = unset[0]
        raise UsageError(
            f"gin macro %{name} is read by {readers[name]} but never set; set it with "
            f"--gin.{name}=VALUE{errors.closest(name, bound)}"
        )


def is_required(value: Any) -> bool:
    """A gin value still set to %gin.REQUIRED."""
    return str(value).strip() == "%gin.REQUIRED"


def check_required_macros(names: Sequence[str]) -> None:
    """Fail with one message listing every macro in `names` that is unset or %gin.REQUIRED."""
    missing = []
    for name in names:
        try:
            value = gin.query_parameter(f"%{name}")
        except ValueError:
            missing.append(name)
            continue
        if is_required(value):
            missing.append(name)
    if missing:
        hints = " ".join(f"--gin.{n}=..." for n in missing)
        raise UsageError(
            f"missing required gin values: {', '.join(missing)}. Set them, e.g. {hints}"
        )


def require_run_dir(macro: str = "MODEL_DIR") -> str:
    """The directory `%macro` names, which must exist (eval and infer read a training run's
    checkpoints: a mistyped MODEL_DIR must not quietly evaluate the untrained base)."""
    path = gin.query_parameter(f"%{macro}")
    if not isinstance(path, str) or not storage.is_dir(path):
        raise UsageError(
            f"{macro}={path!r} is not a directory; point --gin.{macro} at the directory "
            "`fiat-t5x train` wrote (with its checkpoint_N folders), or create an empty one to "
            "use the base model alone"
        )
    return path


def configured(fn: Callable) -> Callable:
    """`fn` with its gin bindings applied (registering it if no gin file mentioned it)."""
    try:
        return gin.get_configurable(fn)
    except ValueError:
        return gin.configurable(fn)


def write_config(model_dir: str, filename: str = "config.gin") -> str:
    """Write the full gin configuration of this run to MODEL_DIR (process 0 only)."""
    import jax

    path = storage.join(model_dir, filename)
    if jax.process_index() == 0:
        storage.write_text(path, gin.config_str())
    return path


def configure_logging(quiet_absl: bool = True) -> None:
    """INFO logs with timestamps for the entry points; absl (orbax) only from WARNING up;
    third-party noise filtered (`log_noise`)."""
    import logging

    fmt = "%(asctime)s %(levelname)s %(message)s"
    root = logging.getLogger()
    # An import may already have given the root logger a plain stderr handler (logging's
    # default "INFO:root:..." format): reformat it rather than add a second one.
    plain = [h for h in root.handlers if type(h) is logging.StreamHandler]
    for handler in plain:
        handler.setFormatter(logging.Formatter(fmt))
    if not root.handlers:
        logging.basicConfig(format=fmt)
    root.setLevel(logging.INFO)
    if quiet_absl:
        logging.getLogger("absl").setLevel(logging.WARNING)
    log_noise.install()


def run_metrics_main(argv: Sequence[str], module: str, function: str, usage: str) -> int:
    """`main` of a command whose gin-configured `module.function` returns {metric: value}:
    MODEL_DIR is required, ValueError/FileNotFoundError become usage errors (exit 2), and the
    metrics are printed one per line."""
    import importlib

    configure_logging(quiet_absl=False)

    def body() -> None:
        # Configure the imported module's function: gin files name it, not __main__'s copy.
        target = getattr(importlib.import_module(module), function)
        try:
            metrics = configured(target)()
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(str(e)) from e
        for name, value in sorted(metrics.items()):
            print(f"{name}: {value:.2f}")

    return run_main(argv, body, ("MODEL_DIR",), usage)


def _prog(usage: str) -> str:
    """'python -m fiat_t5x.train' from 'usage: python -m fiat_t5x.train --gin_file=...'."""
    words = []
    for word in usage.removeprefix("usage:").split():
        if word.startswith(("--", "[", "<")):
            break
        words.append(word)
    return " ".join(words)


def run_main(
    argv: Sequence[str], body: Callable[[], Any], required_macros: Sequence[str], usage: str
) -> int:
    """Parse flags and gin, check the macros, run `body`; a user error is one message on
    stderr and exit code 2 (`fiat_t5x.errors`)."""

    @errors.command(_prog(usage))
    def main(args: Sequence[str]) -> int:
        parsed = parse_args(args)
        if parsed.help:
            print(usage + __doc__)
            return 0
        parse_gin(parsed)
        check_macros(parsed, required_macros)
        tf_devices.keep_tensorflow_on_cpu()
        body()
        return 0

    return main(argv)
