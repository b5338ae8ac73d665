#!/usr/bin/env python3
"""Regenerate tests/conformance/data from upstream sources at a release's tag: the facts are
upstream's, this script is ours. It reads git mirrors (``--git-dir``, e.g. a bare clone of
github.com/coredns/coredns) with ``git show TAG:PATH``; nothing is built or run.

    python scripts/upstream_facts.py coredns --git-dir DIR --tag v1.12.4 > coredns-1.12.4.json
    python scripts/upstream_facts.py flannel --git-dir DIR --tag v0.27.4 > flannel-0.27.4.json
    python scripts/upstream_facts.py node --mirrors DIR --tag kubernetes-1.35.2 \\
        --merge-from tests/conformance/data/k8s-1.35.2-node.json > node-1.35.2.json

What is read:
- CoreDNS: plugin.cfg (the directives compiled in, in order); for each plugin of
  ``PLUGINS``, the keywords its setup parses inside a block: the ``case`` labels of every
  ``switch c.Val() {`` in the plugin's Go files (string constants resolved).
- flannel: the fields of ``Config`` in pkg/subnet/config.go (net-conf.json's keys) and of
  the vxlan backend's config struct (pkg/backend/vxlan/vxlan.go).
- node: the KubeletConfiguration and KubeProxyConfiguration parts of k8s-<v>-node.json, from
  the Kubernetes staging repositories (``STAGING``) at tag kubernetes-<v>, each a bare mirror
  DIR/kubernetes+<name>/repo of k8s.io/<name>. From the struct of each kind (kubelet's
  config/v1beta1, kube-proxy's config/v1alpha1) every field is followed through the packages
  it names (all their Go files but tests and generated ones): each JSON path, its type, Go
  type, json name and omitempty, values (``enum``: NodeFacts.enum says from what), feature
  gate (``+featureGate=``) and deprecation (``Deprecated:``); the kind's apiVersion from its
  package's register.go. ``--merge-from`` keeps what a data file has written by hand
  (``MERGED_KEYS``) for each path that is still there, and says on stderr which are gone.
"""

import argparse
import ast
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field, replace

PLUGINS = ("errors", "health", "ready", "kubernetes", "prometheus", "forward", "cache", "loop",
           "reload", "loadbalance", "log", "hosts")


def git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True,
                          capture_output=True, text=True).stdout


def block_keywords(go: str, constants: dict[str, str]) -> list[str]:
    """The labels of each ``switch c.Val() {`` (the keyword of a block's line; switches on a
    keyword's own arguments are written otherwise and are not read), constants resolved."""
    out: list[str] = []
    for sw in re.finditer(r"switch\s+c\.Val\(\)\s*\{", go):
        depth, i = 1, sw.end()
        while i < len(go) and depth > 0:
            if go[i] == "{":
                depth += 1
            elif go[i] == "}":
                depth -= 1
            elif depth == 1 and re.match(r"\bcase\s", go[i:i + 5]) and go[i - 1] in " \t\n":
                labels = go[i + 5:go.index(":", i)]
                for label in (x.strip() for x in labels.split(",")):
                    value = label.strip('"') if label.startswith('"') else constants.get(label)
                    if value and value not in out:
                        out.append(value)
            i += 1
    return out


def string_constants(go: str) -> dict[str, str]:
    """``Name = "value"`` constants of a Go file."""
    return dict(re.findall(r'^\s*(\w+)\s*(?:string\s*)?=\s*"([^"]*)"', go, re.M))


def coredns(git_dir: str, tag: str) -> dict:
    commit = git(git_dir, "rev-parse", f"{tag}^{{commit}}").strip()
    cfg = git(git_dir, "show", f"{tag}:plugin.cfg")
    directives, packages = [], {}
    for line in cfg.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, pkg = line.partition(":")
            directives.append(name)
            packages[name] = pkg
    options = {}
    for name in PLUGINS:
        folder = packages[name].rsplit("/", 1)[-1]  # "metrics", or a full import path
        files = [p for p in git(git_dir, "ls-tree", "--name-only", f"{tag}:plugin/{folder}")
                 .split() if p.endswith(".go") and not p.endswith("_test.go")]
        sources = [git(git_dir, "show", f"{tag}:plugin/{folder}/{f}") for f in files]
        constants = {k: v for go in sources for k, v in string_constants(go).items()}
        found: list[str] = []
        for go in sources:
            found += [k for k in block_keywords(go, constants) if k not in found]
        options[name] = found
    return {"source": {"repo": "github.com/coredns/coredns", "ref": tag, "commit": commit,
                       "files": ["plugin.cfg", *(f"plugin/{p}/*.go" for p in PLUGINS)],
                       "by": "scripts/upstream_facts.py"},
            "directives": directives, "options": options}


def struct_fields(go: str, struct: str) -> list[str]:
    """A Go struct's JSON keys: the json tag's name, else the field's name."""
    body = re.search(rf"type\s+{struct}\s+struct\s*\{{(.*?)\n\}}", go, re.S)
    if body is None:
        raise SystemExit(f"no struct {struct}")
    keys = []
    for line in body.group(1).splitlines():
        m = re.match(r"\s*([A-Z]\w*)\s+[^\s`]+(?:\s+`json:\"([^\",]*)[^`]*`)?", line)
        if m and m.group(2) != "-":
            keys.append(m.group(2) or m.group(1))
    return keys


def flannel(git_dir: str, tag: str) -> dict:
    commit = git(git_dir, "rev-parse", f"{tag}^{{commit}}").strip()
    config = git(git_dir, "show", f"{tag}:pkg/subnet/config.go")
    vxlan = git(git_dir, "show", f"{tag}:pkg/backend/vxlan/vxlan.go")
    return {"source": {"repo": "github.com/flannel-io/flannel", "ref": tag, "commit": commit,
                       "files": ["pkg/subnet/config.go", "pkg/backend/vxlan/vxlan.go"],
                       "by": "scripts/upstream_facts.py"},
            "net_conf_keys": struct_fields(config, "Config"),
            "backends": {"vxlan": ["Type", *struct_fields(vxlan, "VXLANConfig")]}}


# -- Kubernetes node component configs --------------------------------------------------------

# The kinds of k8s-<v>-node.json read from the sources: (Go package, struct).
NODE_KINDS = (("k8s.io/kubelet/config/v1beta1", "KubeletConfiguration"),
              ("k8s.io/kube-proxy/config/v1alpha1", "KubeProxyConfiguration"))
# The staging repositories (k8s.io/<name>, github.com/kubernetes/<name>) node reads.
STAGING = ("kubelet", "kube-proxy", "component-base", "api", "apimachinery")
# Types that write themselves in JSON (their own UnmarshalJSON): the JSON type they read. Any
# other type with its own UnmarshalJSON or UnmarshalText stops the script.
JSON_SCALARS = {
    "k8s.io/apimachinery/pkg/apis/meta/v1.Duration": "duration",
    "k8s.io/apimachinery/pkg/apis/meta/v1.Time": "time",
    "k8s.io/apimachinery/pkg/apis/meta/v1.MicroTime": "time",
    "k8s.io/apimachinery/pkg/api/resource.Quantity": "quantity",
    "k8s.io/apimachinery/pkg/api/resource.QuantityValue": "quantity",
    "k8s.io/component-base/logs/api/v1.TimeOrMetaDuration": "duration",
}
# Go's predeclared types that JSON reads as themselves: the name the facts give them.
GO_BASIC = {"string": "string", "bool": "bool", "float32": "float", "float64": "float",
            **{t: t for t in ("int", "int8", "int16", "int32", "int64",
                              "uint", "uint16", "uint32", "uint64")}}
# Keys of a field written by hand, not read: --merge-from keeps them from an existing file.
MERGED_KEYS = ("documentedDefault", "note", "enumDeprecatedValues")

GO_TOKEN = re.compile(r"""
    (?P<nl>\n) | [ \t\r\f]+
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:\\.|[^"\\\n])*"|`[^`]*`|'(?:\\.|[^'\\\n])*')
  | (?P<name>[^\W\d]\w*)
  | (?P<number>\.?\d(?:[eEpP][+-]|[\w.])*)
  | (?P<op>\.\.\.|&\^=?|<<=?|>>=?|&&|\|\||<-|\+\+|--|[-+*/%&|^<>=!:]=|.)
""", re.X | re.S)
# Keywords after which a line end is no semicolon (Go's rule: after any other name it is).
GO_KEYWORDS = {"case", "chan", "const", "default", "defer", "else", "for", "func", "go",
               "goto", "if", "import", "interface", "map", "package", "range", "select",
               "struct", "switch", "type", "var"}


@dataclass
class Tok:
    kind: str  # name, number, string, op; eof past the end
    text: str
    line: int
    doc: tuple[str, ...] = ()


@dataclass
class GoType:
    """A type expression as written: ``kind`` name, pointer, slice, array, map, struct or
    other (interface, func, chan)."""
    kind: str
    text: str
    qual: str = ""  # name: its package's name in the file, if qualified
    name: str = ""
    elem: "GoType | None" = None  # pointer, slice, array; a map's value
    key: "GoType | None" = None  # a map's key
    fields: list["GoField"] = field(default_factory=list)  # struct


@dataclass
class GoField:
    names: list[str]  # empty: an embedded field
    type: GoType
    tag: str
    doc: tuple[str, ...]


@dataclass
class GoDecl:
    """A declaration, ``type Name T`` or ``const Name T = v``, with where it is."""
    name: str
    type: GoType | None
    doc: tuple[str, ...]
    path: str
    imports: dict[str, str]
    value: str | None = None  # a constant: its string value (or None)
    ref: str = ""  # a constant whose value is another constant's: that constant's name
    block: tuple[str, int] = ("", 0)  # a constant: its const declaration (file, line)


@dataclass
class GoFile:
    path: str
    imports: dict[str, str] = field(default_factory=dict)
    types: list[GoDecl] = field(default_factory=list)
    consts: list[GoDecl] = field(default_factory=list)
    methods: set[tuple[str, str]] = field(default_factory=set)  # (receiver type, name)


def _ends_statement(tok: Tok) -> bool:
    """Whether a line ending after ``tok`` ends the statement (Go inserts a semicolon)."""
    return (tok.kind in ("number", "string") or tok.text in (")", "]", "}", "++", "--")
            or (tok.kind == "name" and tok.text not in GO_KEYWORDS))


def _comment_lines(text: str) -> list[str]:
    """A comment's text lines, without ``//`` (and one space after it) or ``/* */``."""
    if text.startswith("//"):
        return [text[3:] if text.startswith("// ") else text[2:]]
    return [line.strip() for line in text[2:-2].split("\n")]


def go_tokens(src: str) -> list[Tok]:
    """Go's tokens, with the semicolons Go inserts at line ends; each carries its doc comment:
    the comment group that ends on the line above it (comments on a line of their own, no
    blank line between), as lines without the comment markers."""
    toks: list[Tok] = []
    line, group, group_end = 1, [], 0
    for m in GO_TOKEN.finditer(src):
        kind, text = m.lastgroup, m.group()
        if kind == "nl" or (kind == "comment" and "\n" in text):
            if toks and toks[-1].text != ";" and _ends_statement(toks[-1]):
                toks.append(Tok("op", ";", line))
        if kind == "comment":
            if toks and toks[-1].line == line and toks[-1].text != ";":
                group = []  # after code on its line: no doc comment
            else:
                if group_end != line - 1:
                    group = []
                group = group + _comment_lines(text)
                group_end = line + text.count("\n")
        elif kind in ("name", "number", "string", "op"):
            doc = tuple(group) if group and group_end == line - 1 else ()
            toks.append(Tok(kind, text, line, doc))
            group = []
        if kind is not None:
            line += text.count("\n")
    return toks


def go_string(literal: str) -> str:
    """The value of a Go string literal (raw or interpreted)."""
    if literal.startswith("`"):
        return literal[1:-1]
    return ast.literal_eval(literal)


class GoParser:
    """The top-level declarations of one Go file: imports, types, constants and the names of
    methods. Function bodies and variables are skipped; nothing is type-checked."""

    def __init__(self, src: str, path: str):
        self.toks, self.i, self.path = go_tokens(src), 0, path

    def peek(self, ahead: int = 0) -> Tok:
        j = self.i + ahead
        return self.toks[j] if j < len(self.toks) else Tok("eof", "", 0)

    def take(self) -> Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.text != text:
            raise SystemExit(f"{self.path}:{tok.line}: {text!r} expected, {tok.text!r} found")

    def skip_block(self) -> None:
        """Past the bracket that opens here and the one that closes it."""
        closing = {"(": ")", "[": "]", "{": "}"}
        stack = [closing[self.take().text]]
        while stack and self.peek().kind != "eof":
            text = self.take().text
            if text in closing:
                stack.append(closing[text])
            elif text == stack[-1]:
                stack.pop()

    def file(self) -> GoFile:
        f = GoFile(self.path)
        while self.peek().kind != "eof":
            tok = self.take()
            if tok.text == "import":
                for _ in self.specs(tok.doc):
                    alias = self.take().text if self.peek().kind != "string" else ""
                    path = go_string(self.take().text)
                    f.imports[alias or path.rsplit("/", 1)[-1]] = path
            elif tok.text == "type":
                for doc in self.specs(tok.doc):
                    f.types.append(self.type_spec(doc, f.imports))
            elif tok.text == "const":
                last_type: GoType | None = None
                for doc in self.specs(tok.doc):
                    last_type = self.const_spec(doc, f, last_type, (self.path, tok.line))
            elif tok.text == "var":
                for _ in self.specs(tok.doc):
                    self.skip_expression()
            elif tok.text == "func":
                self.func(f)
        return f

    def specs(self, doc: tuple[str, ...]):
        """Each spec of ``keyword X`` or ``keyword ( X; Y )``: yields its doc comment, the
        caller reads the spec."""
        if self.peek().text != "(":
            yield doc
            return
        self.take()
        while True:
            while self.peek().text == ";":
                self.take()
            if self.peek().text in (")", ""):
                self.take()
                return
            yield self.peek().doc

    def skip_expression(self) -> None:
        while self.peek().text not in (";", ")", ""):
            if self.peek().text in ("(", "[", "{"):
                self.skip_block()
            else:
                self.take()

    def type_spec(self, doc: tuple[str, ...], imports: dict[str, str]) -> GoDecl:
        name = self.take().text
        if self.peek().text == "[" and self.peek(1).kind == "name" and \
                self.peek(2).text not in ("]", "."):
            self.skip_block()  # type parameters
        if self.peek().text == "=":
            self.take()
        return GoDecl(name, self.type_(), doc, self.path, imports)

    def const_spec(self, doc: tuple[str, ...], f: GoFile, last_type: GoType | None,
                   block: tuple[str, int]) -> GoType | None:
        """``A, B [Type] [= x, y]``; without ``= ...`` the previous spec's type repeats (iota).
        A value is read if it is a string literal or the name of a constant."""
        names = [self.take().text]
        while self.peek().text == ",":
            self.take()
            names.append(self.take().text)
        typ = None
        if self.peek().text not in ("=", ";", ")", ""):
            typ = self.type_()
        values: list[list[Tok]] = []
        if self.peek().text == "=":
            self.take()
            values = self.expressions()
        else:
            typ = last_type
        for n, name in enumerate(names):
            expr = values[n] if n < len(values) else []
            single = expr[0] if len(expr) == 1 else Tok("eof", "", 0)
            f.consts.append(GoDecl(
                name, typ, doc, self.path, f.imports,
                value=go_string(single.text) if single.kind == "string" else None,
                ref=single.text if single.kind == "name" else "", block=block))
        return typ

    def expressions(self) -> list[list[Tok]]:
        """A comma-separated list of expressions, up to ``;`` or ``)``: each one's tokens."""
        out: list[list[Tok]] = [[]]
        while self.peek().text not in (";", ")", ""):
            if self.peek().text == ",":
                self.take()
                out.append([])
            elif self.peek().text in ("(", "[", "{"):
                start = self.i
                self.skip_block()
                out[-1] += self.toks[start:self.i]
            else:
                out[-1].append(self.take())
        return out

    def func(self, f: GoFile) -> None:
        """``func [(r *T)] Name(...) ... { ... }``: records (T, Name) of a method."""
        receiver = ""
        if self.peek().text == "(":
            start = self.i
            self.skip_block()
            names = [t.text for t in self.toks[start:self.i] if t.kind == "name"]
            receiver = names[1] if len(names) > 1 else names[0] if names else ""
        name = self.take().text
        while self.peek().text not in ("{", ";", ""):
            if self.peek().text in ("(", "["):
                self.skip_block()
            elif self.peek().text in ("struct", "interface") and self.peek(1).text == "{":
                self.take()
                self.skip_block()
            else:
                self.take()
        if self.peek().text == "{":
            self.skip_block()
        if receiver:
            f.methods.add((receiver, name))

    def type_(self) -> GoType:
        tok = self.take()
        if tok.text == "*":
            elem = self.type_()
            return GoType("pointer", "*" + elem.text, elem=elem)
        if tok.text == "(":
            inner = self.type_()
            self.expect(")")
            return inner
        if tok.text == "[":
            size = ""
            while self.peek().text not in ("]", ""):
                size += self.take().text
            self.expect("]")
            elem = self.type_()
            return GoType("array" if size else "slice", f"[{size}]{elem.text}", elem=elem)
        if tok.text == "map":
            self.expect("[")
            key = self.type_()
            self.expect("]")
            elem = self.type_()
            return GoType("map", f"map[{key.text}]{elem.text}", key=key, elem=elem)
        if tok.text == "struct":
            return GoType("struct", "struct{...}", fields=self.struct_fields())
        if tok.text == "interface":
            self.skip_block()
            return GoType("other", "interface{...}")
        if tok.text == "func":
            self.skip_block()
            if self.peek().text == "(":
                self.skip_block()
            elif self.peek().kind == "name" or self.peek().text in ("*", "[", "map"):
                self.type_()
            return GoType("other", "func(...)")
        if tok.text in ("chan", "<-"):
            while self.peek().text in ("chan", "<-"):
                self.take()
            return GoType("other", f"chan {self.type_().text}")
        if tok.kind != "name":
            raise SystemExit(f"{self.path}:{tok.line}: a type expected, {tok.text!r} found")
        if self.peek().text == ".":
            self.take()
            name = self.take().text
            return GoType("name", f"{tok.text}.{name}", qual=tok.text, name=name)
        return GoType("name", tok.text, name=tok.text)

    def struct_fields(self) -> list[GoField]:
        """``{ A, B T `tag`; Embedded; *pkg.Embedded `tag` }``, each with its doc comment."""
        self.expect("{")
        fields: list[GoField] = []
        while True:
            tok = self.peek()
            if tok.text == ";":
                self.take()
                continue
            if tok.text in ("}", ""):
                self.take()
                return fields
            nxt = self.peek(1)
            if tok.text == "*" or nxt.text in (".", ";", "}") or nxt.kind == "string":
                names: list[str] = []
            else:
                names = [self.take().text]
                while self.peek().text == ",":
                    self.take()
                    names.append(self.take().text)
            typ = self.type_()
            tag = go_string(self.take().text) if self.peek().kind == "string" else ""
            fields.append(GoField(names, typ, tag, tok.doc))


@dataclass
class GoPackage:
    """A Go package's declarations, from all its files but tests and generated ones."""
    path: str
    module: str
    types: dict[str, GoDecl] = field(default_factory=dict)
    consts: list[GoDecl] = field(default_factory=list)
    methods: set[tuple[str, str]] = field(default_factory=set)

    def add(self, f: GoFile) -> None:
        for decl in f.types:
            self.types.setdefault(decl.name, decl)
        self.consts += f.consts
        self.methods |= f.methods

    def const_value(self, const: GoDecl) -> str | None:
        """A string constant's value, following a constant named as its value."""
        seen = set()
        while const.value is None and const.ref and const.ref not in seen:
            seen.add(const.ref)
            const = next((c for c in self.consts if c.name == const.ref), const)
        return const.value


def is_package_source(name: str) -> bool:
    return name.endswith(".go") and not name.endswith("_test.go") and "generated" not in name


class Mirrors:
    """Go modules' bare git mirrors at one tag (``git_dirs``: module path -> git dir): their
    packages, read on first use (``git show TAG:PATH``), and the files facts were read from."""

    def __init__(self, git_dirs: dict[str, str], tag: str):
        self.git_dirs, self.tag = git_dirs, tag
        self.packages: dict[str, GoPackage] = {}
        self.used: dict[str, set[str]] = {}

    def locate(self, import_path: str) -> tuple[str, str]:
        """The module that holds a package, and the package's folder in it."""
        for module in sorted(self.git_dirs, key=len, reverse=True):
            if import_path == module or import_path.startswith(module + "/"):
                return module, import_path[len(module) + 1:]
        raise SystemExit(f"no mirror of the module of {import_path}")

    def read(self, import_path: str, name: str) -> str:
        """A file of a package, recorded as read."""
        module, folder = self.locate(import_path)
        path = f"{folder}/{name}" if folder else name
        self.use(module, path)
        return git(self.git_dirs[module], "show", f"{self.tag}:{path}")

    def package(self, import_path: str) -> GoPackage:
        if import_path not in self.packages:
            module, folder = self.locate(import_path)
            git_dir = self.git_dirs[module]
            pkg = GoPackage(import_path, module)
            for name in git(git_dir, "ls-tree", "--name-only", f"{self.tag}:{folder}").split():
                if is_package_source(name):
                    path = f"{folder}/{name}" if folder else name
                    pkg.add(GoParser(git(git_dir, "show", f"{self.tag}:{path}"), path).file())
            self.packages[import_path] = pkg
        return self.packages[import_path]

    def use(self, module: str, path: str) -> None:
        self.used.setdefault(module, set()).add(path)

    def source(self) -> dict:
        """Each module read: its repository, tag, commit, and the files facts came from."""
        return {module: {"repo": "kubernetes/" + module.rsplit("/", 1)[-1], "tag": self.tag,
                         "commit": git(self.git_dirs[module], "rev-parse",
                                       f"{self.tag}^{{commit}}").strip(),
                         "files": sorted(files)}
                for module, files in sorted(self.used.items())}


@dataclass
class Shape:
    """What JSON reads for a Go type: the facts' ``type`` name; for an object or ``[]object``
    the struct of its fields; for a slice its element; the first named type met (enums)."""
    type: str
    struct: tuple[GoType, GoPackage, dict[str, str]] | None = None
    elem: "Shape | None" = None
    item: GoType | None = None  # a slice's element type as written
    named: tuple[GoPackage, GoDecl] | None = None


def json_tag(tag: str) -> tuple[str | None, list[str]]:
    """The ``json:"name,opt,..."`` of a struct tag: (name, options); name None without one."""
    m = re.search(r'(?:^|\s)json:"([^"]*)"', tag)
    if m is None:
        return None, []
    name, *opts = m.group(1).split(",")
    return name, opts


def doc_text(doc: tuple[str, ...]) -> list[str]:
    """A doc comment's paragraphs, each one line of text; markers (``+...``) left out."""
    paragraphs, current = [], []
    for line in (x.strip() for x in doc):
        if line.startswith("+"):
            continue
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    return paragraphs + ([" ".join(current)] if current else [])


QUOTED = r'`[^`]*`|"[^"]*"'
LIST_ITEM = re.compile(
    rf"^(?:[-*]\s+)?((?:{QUOTED})(?:\s*,\s*(?:{QUOTED}))*)\s*:\s+[A-Za-z][\w-]*\s+\w")
VALID_VALUES = re.compile(r"\b(?:Valid values are|Acceptable options are)\s+(.*?)(?:\.\s|\.$|$)")
ALTERNATIVES = re.compile(r"\(([\w-]+(?:,\s*[\w-]+)*,?\s+or\s+[\w-]+)\)")


def doc_values(doc: tuple[str, ...]) -> list[str]:
    """The values a field's doc comment lists, by the first of these rules that finds any:
    list lines, each naming values in quotes or backquotes and saying after a colon in words
    what they do (``- "none": do nothing.``, ``- `pod`: ...``, ``"", "NoSwap": ...``; not
    JSON such as ``"a": true``); else the quoted
    words of a sentence "Valid values are ..." / "Acceptable options are ..."; else a
    parenthesised "(a or b)" / "(a, b or c)" of bare words."""
    lines = [x.strip() for x in doc if not x.strip().startswith("+")]
    found = [v[1:-1] for line in lines if (m := LIST_ITEM.match(line))
             for v in re.findall(QUOTED, m.group(1))]
    paragraphs = doc_text(doc)
    if not found:
        found = [v[1:-1] for p in paragraphs for m in VALID_VALUES.finditer(p)
                 for v in re.findall(QUOTED, m.group(1))]
    if not found:
        found = [v for p in paragraphs for m in ALTERNATIVES.finditer(p)
                 for v in re.split(r",?\s+or\s+|,\s*", m.group(1))]
    return list(dict.fromkeys(found))


def typed_constants(pkg: GoPackage, type_name: str) -> list[GoDecl]:
    """The constants declared of a named type (``X Type = "v"``), in their order."""
    return [c for c in pkg.consts if c.type is not None and c.type.kind == "name"
            and not c.type.qual and c.type.name == type_name]


def named_constants(pkg: GoPackage, field_name: str) -> list[GoDecl]:
    """The untyped string constants named ``<Something><field_name>``
    (``NoneMemoryManagerPolicy`` for a field MemoryManagerPolicy), in their order, if there
    are two or more and all are declared in one ``const`` block: a set of values declared
    together (constants that merely end alike, such as core/v1's ``...Key``s, are not)."""
    found = [c for c in pkg.consts if c.type is None and c.name.endswith(field_name)
             and c.name != field_name and pkg.const_value(c) is not None]
    if len(found) < 2 or len({c.block for c in found}) > 1:
        return []
    return found


class NodeFacts:
    """The fields of Kubernetes configuration structs, read from the Go sources of the
    modules they reach (``mirrors``)."""

    def __init__(self, mirrors: Mirrors):
        self.mirrors = mirrors

    def lookup(self, t: GoType, pkg: GoPackage, imports: dict[str, str]):
        """A type name: its JSON type (a str) if predeclared or in JSON_SCALARS, else its
        declaration and package. Stops at a type with its own JSON form not in
        JSON_SCALARS."""
        if not t.qual and t.name in GO_BASIC:
            return GO_BASIC[t.name]
        if t.qual and t.qual not in imports:
            raise SystemExit(f"{t.text}: no import {t.qual!r}")
        path = imports[t.qual] if t.qual else pkg.path
        if f"{path}.{t.name}" in JSON_SCALARS:
            return JSON_SCALARS[f"{path}.{t.name}"]
        where = self.mirrors.package(path)
        decl = where.types.get(t.name)
        if decl is None:
            raise SystemExit(f"no type {t.name} in {path}")
        if {(t.name, "UnmarshalJSON"), (t.name, "UnmarshalText")} & where.methods:
            raise SystemExit(f"{path}.{t.name} reads its own JSON: say which in JSON_SCALARS")
        self.mirrors.use(where.module, decl.path)
        return decl, where

    def shape(self, t: GoType, pkg: GoPackage, imports: dict[str, str]) -> Shape:
        """What JSON reads for ``t`` (written in ``pkg``, whose file imports ``imports``):
        pointers are their element, named types their definition."""
        if t.kind == "pointer":
            return self.shape(t.elem, pkg, imports)
        if t.kind == "name":
            found = self.lookup(t, pkg, imports)
            if isinstance(found, str):
                return Shape(found)
            decl, where = found
            return replace(self.shape(decl.type, where, decl.imports), named=(where, decl))
        if t.kind in ("slice", "array"):
            elem = self.shape(t.elem, pkg, imports)
            if elem.type == "uint8":
                raise SystemExit(f"{t.text}: bytes (base64 in JSON) are not read")
            kind = "[]object" if elem.type == "object" else "[]" + elem.type
            return Shape(kind, struct=elem.struct, elem=elem, item=t.elem)
        if t.kind == "map":
            key, value = self.shape(t.key, pkg, imports), self.shape(t.elem, pkg, imports)
            if key.type != "string" or value.struct is not None:
                raise SystemExit(f"{t.text}: only maps of strings to non-objects are read")
            return Shape(f"map[string]{value.type}")
        if t.kind == "struct":
            return Shape("object", struct=(t, pkg, imports))
        raise SystemExit(f"{t.text}: JSON reads no such type")

    def enum(self, shape: Shape, f: GoField, name: str, pkg: GoPackage) -> list[str]:
        """The values of a string field, by the first of these that gives any: the constants
        of its named type (``X Type = "v"``); its doc comment (doc_values); its named type's
        doc comment, the words in backquotes; the untyped constants of the struct's package
        named after the field (named_constants)."""
        if shape.named is not None:
            where, decl = shape.named
            consts = typed_constants(where, decl.name)
            if consts:
                for c in consts:
                    self.mirrors.use(where.module, c.path)
                return list(dict.fromkeys(v for c in consts
                                          if (v := where.const_value(c)) is not None))
        values = doc_values(f.doc)
        if not values and shape.named is not None:
            values = list(dict.fromkeys(re.findall(r"`([^`]+)`", " ".join(doc_text(
                shape.named[1].doc)))))
        if not values:
            consts = named_constants(pkg, name)
            for c in consts:
                self.mirrors.use(pkg.module, c.path)
            values = list(dict.fromkeys(pkg.const_value(c) for c in consts))
        return values

    def fields(self, struct: GoType, pkg: GoPackage, imports: dict[str, str], prefix: str = "",
               inline: str = "") -> dict[str, dict]:
        """Every JSON path under a struct: its fields by their json names (a field without a
        name in its tag: its Go name; ``json:"-"`` and unexported fields left out), embedded
        structs without a json name flattened into it (``from`` names them), an object's
        fields under ``path.``, a ``[]object``'s under ``path[].``."""
        out: dict[str, dict] = {}
        for f in struct.fields:
            tag_name, opts = json_tag(f.tag)
            if tag_name == "-" and not opts:
                continue
            if f.names and not any(n[:1].isupper() for n in f.names):
                continue
            base = f.type.elem if f.type.kind == "pointer" else f.type
            shape = self.shape(f.type, pkg, imports)
            if not f.names and not tag_name and shape.type == "object":
                inner, where, inner_imports = shape.struct
                out.update(self.fields(inner, where, inner_imports, prefix,
                                       f"{f.type.text} (inline)"))
                continue
            for go_name in f.names or [base.name]:
                if go_name[:1].isupper():
                    key = tag_name or go_name
                    out[prefix + key] = self.describe(f, shape, go_name, key, opts, pkg, inline)
                    if shape.struct is not None:
                        inner, where, inner_imports = shape.struct
                        sub = "." if shape.type == "object" else "[]."
                        out.update(self.fields(inner, where, inner_imports, prefix + key + sub))
        return out

    def describe(self, f: GoField, shape: Shape, go_name: str, key: str, opts: list[str],
                 pkg: GoPackage, inline: str) -> dict:
        """One field's facts: ``type`` (shape), ``goType`` as written, ``jsonName``,
        ``goField``, ``itemGoType`` of a ``[]object``, ``enum`` of a string (``itemEnum`` of
        a ``[]string``), ``featureGate`` (its ``+featureGate=`` markers), ``deprecated`` (the
        text of its ``Deprecated:`` paragraph), ``omitempty``, ``from`` (inlined from)."""
        spec: dict = {"type": shape.type, "goType": f.type.text, "jsonName": key,
                      "goField": go_name}
        if shape.type == "[]object":
            spec["itemGoType"] = shape.item.text
        if shape.type == "string" and (values := self.enum(shape, f, go_name, pkg)):
            spec["enum"] = values
        if shape.type == "[]string" and (values := self.enum(shape.elem, f, go_name, pkg)):
            spec["itemEnum"] = values
        gates = [x.strip()[len("+featureGate="):] for x in f.doc
                 if x.strip().startswith("+featureGate=")]
        if gates:
            spec["featureGate"] = ",".join(gates)
        if (why := deprecation(f.doc)) is not None:
            spec["deprecated"] = why
        if "omitempty" in opts:
            spec["omitempty"] = True
        if inline:
            spec["from"] = inline
        return spec

    def kind(self, import_path: str, name: str) -> dict:
        """A kind: its apiVersion (register.go: ``GroupName`` and the version of
        ``SchemeGroupVersion``, where ``&Kind{}`` is registered) and fields; the fields
        apiVersion and kind (metav1.TypeMeta) take these values only."""
        pkg = self.mirrors.package(import_path)
        decl = pkg.types.get(name)
        if decl is None or decl.type.kind != "struct":
            raise SystemExit(f"no struct {name} in {import_path}")
        self.mirrors.use(pkg.module, decl.path)
        register = self.mirrors.read(import_path, "register.go")
        group = next((pkg.const_value(c) for c in pkg.consts if c.name == "GroupName"), None)
        version = re.search(r'SchemeGroupVersion\s*=\s*schema\.GroupVersion\{Group:\s*GroupName,'
                            r'\s*Version:\s*"([^"]+)"\}', register)
        if group is None or version is None or f"&{name}{{}}" not in register:
            raise SystemExit(f"{import_path}/register.go: {name}'s group version not read")
        api_version = f"{group}/{version.group(1)}"
        fields = self.fields(decl.type, pkg, decl.imports)
        for key, value in (("apiVersion", api_version), ("kind", name)):
            if key in fields:
                fields[key]["enum"] = [value]
        return {"apiVersion": api_version, "kind": name, "goType": f"{import_path}.{name}",
                "fields": fields}


def deprecation(doc: tuple[str, ...]) -> str | None:
    """The text of a doc comment's ``Deprecated:`` line and the lines after it, up to a blank
    line, a marker (``+...``) or another ``Label:`` line (such as ``Default:``)."""
    lines = [x.strip() for x in doc]
    for i, line in enumerate(lines):
        if line.startswith("Deprecated:"):
            text = [line[len("Deprecated:"):].strip()]
            for nxt in lines[i + 1:]:
                if not nxt or nxt.startswith("+") or re.match(r"[A-Z]\w*:", nxt):
                    break
                text.append(nxt)
            return " ".join(text)
    return None


def node(git_dirs: dict[str, str], tag: str) -> dict:
    """The facts of NODE_KINDS at ``tag``, read from ``git_dirs`` (module path -> git dir),
    with the modules, commits and files read (``source.staging``)."""
    mirrors = Mirrors(git_dirs, tag)
    facts = NodeFacts(mirrors)
    kinds = {name: facts.kind(path, name) for path, name in NODE_KINDS}
    return {"source": {"staging": mirrors.source(), "by": "scripts/upstream_facts.py"}, **kinds}


def merge_written(data: dict, old: dict) -> list[str]:
    """Copies MERGED_KEYS of every field of ``old`` (a k8s-<v>-node.json) whose path ``data``
    still has, and an ``enum`` the sources give no values for where ``old`` says where it was
    read instead (``enumFrom``); returns the paths of ``old`` with such keys that it no longer has."""
    lost = []
    for _, kind in NODE_KINDS:
        fields = data[kind]["fields"]
        for path, spec in old.get(kind, {}).get("fields", {}).items():
            kept = {k: spec[k] for k in MERGED_KEYS if k in spec}
            if "enumFrom" in spec and path in fields and "enum" not in fields[path]:
                # values the sources read here do not give, read elsewhere by hand
                kept |= {"enum": spec["enum"], "enumFrom": spec["enumFrom"]}
            if path in fields:
                fields[path].update(kept)
            elif kept:
                lost.append(f"{kind}: {path}")
    return lost


def staging_mirrors(folder: str) -> dict[str, str]:
    """k8s.io/<name> -> ``folder``/kubernetes+<name>/repo, for each of STAGING there."""
    return {f"k8s.io/{name}": f"{folder}/kubernetes+{name}/repo" for name in STAGING
            if os.path.isdir(f"{folder}/kubernetes+{name}/repo")}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["coredns", "flannel", "node"])
    p.add_argument("--git-dir", help="coredns, flannel: the mirror")
    p.add_argument("--mirrors", help="node: the folder of the mirrors kubernetes+<name>/repo")
    p.add_argument("--tag", required=True)
    p.add_argument("--merge-from", help="node: a k8s-<v>-node.json whose written keys to keep")
    a = p.parse_args(argv)
    if a.what == "node":
        if not a.mirrors:
            p.error("node needs --mirrors")
        data = node(staging_mirrors(a.mirrors), a.tag)
        if a.merge_from:
            with open(a.merge_from) as f:
                for lost in merge_written(data, json.load(f)):
                    print(f"not kept (no such path any more): {lost}", file=sys.stderr)
    else:
        if not a.git_dir or a.merge_from:
            p.error(f"{a.what} needs --git-dir, and takes no --merge-from")
        data = {"coredns": coredns, "flannel": flannel}[a.what](a.git_dir, a.tag)
    json.dump(data, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
