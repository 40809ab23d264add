"""The launcher: flags → gin → the configured program → run.

    python launch.py --gin_file=gin/small_16k.gin --gin_param="Train.batch_size = 64"
    torchrun --standalone --nproc_per_node=8 launch.py --gin_file=gin/large_44k.gin

Config mistakes (unknown names, misspelt parameters, missing includes, required values left
unset, macros set but never used) stop the run before any work with a one-paragraph message
naming the file and line or the --gin_param, instead of a traceback.
"""

from __future__ import annotations

import difflib
import importlib.util  # noqa: F401  (gin 0.5 needs it loaded to report missing includes)
import os
import sys
from pathlib import Path
from typing import Sequence

import gin
from absl import app, flags, logging

from mmgin import config_record, dist

REPO_ROOT = Path(__file__).resolve().parents[1]

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin file to parse; repeatable, later files win.")
flags.DEFINE_multi_string("gin_param", [], "Gin binding applied after all files; repeatable.")
flags.DEFINE_multi_string(
    "gin_search_path", [str(REPO_ROOT)], "Folders searched for --gin_file and include paths."
)
flags.DEFINE_bool("dry_run", False, "Parse, build the program, print the operative config, exit.")


class ConfigError(Exception):
    """A configuration mistake the user can fix; printed without a traceback."""


@gin.configurable
def launch(program=gin.REQUIRED, device: str = "auto"):
    """The launcher's root binding: `launch.program = @Train()` picks what runs.

    `device` is 'auto' (CUDA when present), 'cpu' or 'cuda'; it is read before the program is
    built, to join the process group on the right backend.
    """
    del device
    return program


def resolve_gin_file(name: str, search_path: Sequence[str]) -> Path:
    """A --gin_file relative to the working directory, else to each search-path entry."""
    candidates = [Path(name)] + [Path(root) / name for root in search_path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"--gin_file={name} not found (tried {tried}). Check the path.")


def _required_macros() -> list[str]:
    """Macros still set to %gin.REQUIRED after parsing (gin itself reports only the first)."""
    missing = []
    for (name, selector), params in gin.config._CONFIG.items():  # pylint: disable=protected-access
        if selector == "gin.macro" and str(params.get("value")) == "%gin.REQUIRED":
            missing.append(name)
    return sorted(missing)


def _macros() -> tuple[set[str], set[str]]:
    """Macros the parsed config sets, and macros a binding or another macro refers to.

    Gin 0.5 keeps a macro as the binding (name, 'gin.macro') in its config and a `%NAME` as a
    reference to its `macro` configurable anywhere inside a bound value (lists, dicts, tuples).
    """
    config = gin.config._CONFIG  # pylint: disable=protected-access
    defined = {name for name, selector in config if selector == "gin.macro"}
    references = gin.config.iterate_references(config, to=gin.config.get_configurable(gin.config.macro))
    return defined, {reference.config_key[0] for reference in references}


def _refuse_unused_macros(record: config_record.ParsedConfig) -> None:
    """A macro nothing refers to is almost always misspelt (GT_CAHCE) and would be ignored."""
    defined, referenced = _macros()
    problems = []
    for name in sorted(defined - referenced):
        where = record.where_set(name)
        at = f" (set in {', '.join(where)})" if where else ""
        nearest = difflib.get_close_matches(name, sorted(referenced), n=1)
        hint = f"did you mean {nearest[0]}?" if nearest else f"nothing refers to %{name}; remove it"
        problems.append(f"macro {name} is set but never used{at}; {hint}")
    if problems:
        raise ConfigError(" ".join(problems))


def parse(files: Sequence[str], params: Sequence[str], search_path: Sequence[str]) -> None:
    """Parses files then params into gin's global config, turning mistakes into ConfigError."""
    import mmgin.programs  # noqa: F401  (registers every configurable before parsing)

    gin.clear_config()
    for root in search_path:
        gin.add_config_file_search_path(root)
    resolved = [resolve_gin_file(f, search_path) for f in files]
    record = config_record.ParsedConfig(resolved, list(params), [Path(p) for p in search_path])
    for path in resolved:
        try:
            gin.parse_config_file(str(path))
        except (ValueError, KeyError, TypeError, OSError, SyntaxError, AttributeError) as e:
            raise ConfigError(f"in {path}: {e}") from None
    for param in params:
        try:
            gin.parse_config(param)
        except (ValueError, KeyError, TypeError, SyntaxError, AttributeError) as e:
            raise ConfigError(f"in --gin_param={param!r}: {e}") from None
    _refuse_unused_macros(record)
    missing = _required_macros()
    if missing:
        how = " ".join(f"--gin_param=\"{m} = ...\"" for m in missing)
        raise ConfigError(f"required values not set: {', '.join(missing)}. Set them with {how}")
    try:
        gin.finalize()
    except ValueError as e:
        raise ConfigError(_short(str(e))) from None
    config_record.set_current(record)


def _short(message: str) -> str:
    """Gin appends the whole config to some messages; keep the part that says what is wrong."""
    head = message.split(" in config string:")[0]
    return head.replace("/gin.macro", " (macro: define it or pass --gin_param)")


def _configured_device() -> str:
    try:
        return gin.query_parameter("launch.device")
    except ValueError:
        return "auto"


def build():
    """Builds the configured program; missing required parameters become ConfigError."""
    try:
        return launch()
    except RuntimeError as e:
        if "Required bindings" in str(e) or "not provided in config" in str(e):
            raise ConfigError(str(e).split("\n")[0]) from None
        raise


def run(files: Sequence[str], params: Sequence[str], search_path: Sequence[str], dry_run: bool) -> int:
    parse(files, params, search_path)
    with dist.session(_configured_device()):
        program = build()
        output_dir = getattr(program, "output_dir", None)
        config_record.write_operative(output_dir)
        if dry_run:
            if dist.is_main():
                print(gin.operative_config_str())
            return 0
        program.run()
        config_record.write_operative(output_dir)
    return 0


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.gin_file and not FLAGS.gin_param:
        raise app.UsageError("give at least one --gin_file (see README.md)")
    logging.set_verbosity(logging.INFO)
    if int(os.environ.get("RANK", "0")) != 0:
        logging.set_verbosity(logging.WARNING)
    try:
        code = run(FLAGS.gin_file, FLAGS.gin_param, FLAGS.gin_search_path, FLAGS.dry_run)
    except ConfigError as e:
        print(f"mmgin: config error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


def console_main() -> None:
    app.run(main)
