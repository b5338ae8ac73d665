"""``k8simg config set``: one value of ``cluster.yaml`` changed in place, its comments and
layout kept, the result validated before anything is written (atomically, 0600)."""

import io
from pathlib import Path

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from k8simg.errors import ConfigError
from k8simg.fsutil import atomic_write
from k8simg.model.config import ClusterConfig
from k8simg.model.validate import TextError, parse_config, read_text


def parse_value(text: str, dotted: str, source: str = "VALUE"):
    """``text`` as a YAML value (``3``, ``true``, ``[a, b]``, ``{count: 3}``, ``null``).

    :raises ConfigError: naming ``dotted`` when it is not one YAML value.
    """
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        why = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(source, [(dotted, f"the value {text!r} is not YAML ({why})")]) \
            from None


def set_value(path: Path, dotted: str, text: str) -> ClusterConfig:
    """Set ``dotted`` (``workers.count``, ``api.extra_sans``, ``bastion.allowed_cidrs.0``) to
    the YAML value ``text`` in the file ``path``.

    :returns: the validated definition as written.
    :raises ConfigError: naming the dotted path (a key that does not exist in the schema, a
        value it refuses) or the file; the file is untouched.
    """
    path = Path(path)
    if not dotted or any(not p for p in dotted.split(".")):
        raise ConfigError(str(path), [(dotted or "PATH", "give a dotted path such as "
                                                         "workers.count")])
    value = parse_value(text, dotted, str(path))
    try:
        original = read_text(path)
    except OSError as e:
        raise ConfigError(str(path), [("", f"cannot read: {e.strerror}")]) from None
    except TextError as e:
        raise ConfigError(str(path), [("", str(e))]) from None
    parse_config(original, str(path))  # a file that is already invalid is said as such
    rt = YAML()
    rt.preserve_quotes = True
    rt.indent(mapping=2, sequence=4, offset=2)  # as `k8simg init` writes lists
    rt.representer.add_representer(  # null stays null, not an empty value
        type(None), lambda r, _d: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = rt.load(original)
    try:
        _set(doc, dotted, value, str(path))
    except _NotAnIndex as e:
        raise ConfigError(str(path), [(dotted, str(e))]) from None
    out = io.StringIO()
    rt.dump(doc, out)
    cfg = parse_config(out.getvalue(), str(path))  # nothing is written unless it validates
    atomic_write(path, out.getvalue(), 0o600)
    return cfg


def _set(doc, dotted: str, value, source: str) -> None:
    node, parts = doc, dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[:i + 1])
        if isinstance(node, CommentedSeq):
            node = node[_index(node, part)]
        elif isinstance(node, CommentedMap):
            if part not in node or node[part] is None:
                node[part] = CommentedMap()
            node = node[part]
        else:
            raise ConfigError(source, [(here, "is not a mapping or a list: nothing to set "
                                             "under it")])
    last = parts[-1]
    if isinstance(node, CommentedSeq):
        index = _index(node, last, append=True)
        if index == len(node):
            node.append(value)
        else:
            node[index] = value
    elif isinstance(node, CommentedMap):
        node[last] = value
    else:
        raise ConfigError(source, [(".".join(parts[:-1]), "is not a mapping or a list")])


class _NotAnIndex(ValueError):
    pass


def _index(seq, part: str, append: bool = False) -> int:
    """The list index ``part`` (one past the end appends, where ``append``)."""
    if not part.isdigit() or int(part) > len(seq) - (0 if append else 1):
        raise _NotAnIndex(f"{part!r} is not an index of the list (it has {len(seq)} items)")
    return int(part)
