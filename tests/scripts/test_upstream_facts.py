"""scripts/upstream_facts.py on small Go sources written here, in git repositories made in
tmp_path and tagged (the script reads mirrors with ``git show TAG:PATH``): each fact it reads
asserted exactly."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "upstream_facts.py"
_spec = importlib.util.spec_from_file_location("upstream_facts", SCRIPT)
uf = importlib.util.module_from_spec(_spec)
sys.modules["upstream_facts"] = uf  # its dataclasses look their module up
_spec.loader.exec_module(uf)

TAG = "kubernetes-1.99.0"


def git_repo(git_dir: Path, files: dict[str, str], tag: str = TAG) -> str:
    """A bare repository at ``git_dir`` with one commit of ``files``, tagged ``tag``."""
    work = git_dir.parent / f"{git_dir.name}.work"
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    g = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid",
         "-c", "commit.gpgsign=false", f"--git-dir={git_dir}", f"--work-tree={work}"]
    subprocess.run(["git", "init", "-q", "--bare", str(git_dir)], check=True)
    subprocess.run([*g, "add", "-A"], check=True)
    subprocess.run([*g, "commit", "-q", "-m", "sources"], check=True)
    subprocess.run([*g, "tag", tag], check=True)
    return str(git_dir)


def commit_of(git_dir: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", "rev-parse", f"{TAG}^{{commit}}"],
                          check=True, capture_output=True, text=True).stdout.strip()


# -- node: two modules and a stand-in for apimachinery ----------------------------------------

META = """package v1

// TypeMeta names a kind.
type TypeMeta struct {
\tKind string `json:"kind,omitempty"`
\tAPIVersion string `json:"apiVersion,omitempty"`
}
"""

APP_REGISTER = """package v1

import "k8s.io/apimachinery/pkg/runtime/schema"

const GroupName = "widget.example.com"

var SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: "v1"}

func addKnownTypes(scheme *runtime.Scheme) error {
\tscheme.AddKnownTypes(SchemeGroupVersion,
\t\t&Config{},
\t)
\treturn nil
}
"""

APP_TYPES = """package v1

import (
\tmetav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
\t"example.com/lib/shared"
)

// Mode is how the widget runs.
type Mode string

const (
\t// ModeFast runs fast.
\tModeFast Mode = "fast"
\t// ModeOff is not there yet.
\t// ModeOff Mode = "off"
\tModeSlow Mode = "slow"
)

/* Config is below. */

// Config configures the widget.
type Config struct {
\tmetav1.TypeMeta `json:",inline"`

\t// mode says how.
\tMode Mode `json:"mode,omitempty"`
\tEnabled *bool `json:"enabled,omitempty"` // Deprecated: a trailing comment, no doc
\t// names lists names.
\tNames []string `json:"names"`

\t// Deprecated: a comment of its own, not labels' doc.

\t// labels label it.
\tLabels map[string]string `json:"labels,omitempty"`
\t// period is how often.
\t// Deprecated: use interval
\t// instead.
\t// Default: "1m"
\t// +optional
\tPeriod metav1.Duration `json:"period,omitempty"`
\t// Internal is not serialised.
\tInternal string `json:"-"`
\thidden   int
\t// shared comes from another module.
\t// +featureGate=Sharing
\tShared *shared.Options `json:"shared,omitempty"`
\tRules []Rule `json:"rules"`
\tRatio float64
\tLimits map[string][]string `json:"limits"`
}

type Rule struct {
\tName string `json:"name"`
\tWeight int32 `json:"weight,omitempty"`
}

func (c *Config) Validate() error {
\tif c.Mode == "" { return nil }
\treturn nil
}
"""

LIB_TYPES = """package shared

// Level is a verbosity.
type Level uint32

// Supported styles.
const (
\tPlainStyle = "plain"
\tFancyStyle = "fancy"
)

// Engine runs it: `v8`, or else `spidermonkey` (`v8` by default).
type Engine string

type Options struct {
\tInner `json:",inline"`
\tStyle string `json:"style"`
\tLevel Level `json:"level"`
\t// Color is the color (red or green).
\tColor string `json:"color,omitempty"`
\t// Theme. Values:
\t// - "dark": a dark theme.
\t// - `light`: a light theme.
\tTheme string `json:"theme"`
\tEngine Engine `json:"engine"`
\t// Acceptable options are `x`, `y`
\t// and `z`.
\tFlavors []string `json:"flavors"`
}

type Inner struct {
\tDepth int64 `json:"depth"`
}
"""


@pytest.fixture
def node_mirrors(tmp_path) -> dict[str, str]:
    return {
        "k8s.io/apimachinery": git_repo(tmp_path / "apimachinery",
                                        {"pkg/apis/meta/v1/types.go": META}),
        "example.com/app": git_repo(tmp_path / "app", {
            "config/v1/register.go": APP_REGISTER, "config/v1/types.go": APP_TYPES,
            # read first if read at all (tests and generated files are not)
            "config/v1/a_test.go": "package v1\n\ntype Config struct{}\n",
            "config/v1/a_generated.go": "package v1\n\ntype Rule struct{ B bool }\n"}),
        "example.com/lib": git_repo(tmp_path / "lib", {"shared/types.go": LIB_TYPES}),
    }


def test_node_kind_reads_every_field(node_mirrors):
    mirrors = uf.Mirrors(node_mirrors, TAG)
    kind = uf.NodeFacts(mirrors).kind("example.com/app/config/v1", "Config")
    assert {k: v for k, v in kind.items() if k != "fields"} == {
        "apiVersion": "widget.example.com/v1", "kind": "Config",
        "goType": "example.com/app/config/v1.Config"}
    inline = {"from": "metav1.TypeMeta (inline)", "omitempty": True}
    assert kind["fields"] == {
        "kind": {"type": "string", "goType": "string", "jsonName": "kind", "goField": "Kind",
                 "enum": ["Config"], **inline},
        "apiVersion": {"type": "string", "goType": "string", "jsonName": "apiVersion",
                       "goField": "APIVersion", "enum": ["widget.example.com/v1"], **inline},
        "mode": {"type": "string", "goType": "Mode", "jsonName": "mode", "goField": "Mode",
                 "enum": ["fast", "slow"], "omitempty": True},
        "enabled": {"type": "bool", "goType": "*bool", "jsonName": "enabled",
                    "goField": "Enabled", "omitempty": True},
        "names": {"type": "[]string", "goType": "[]string", "jsonName": "names",
                  "goField": "Names"},
        "labels": {"type": "map[string]string", "goType": "map[string]string",
                   "jsonName": "labels", "goField": "Labels", "omitempty": True},
        "period": {"type": "duration", "goType": "metav1.Duration", "jsonName": "period",
                   "goField": "Period", "deprecated": "use interval instead.",
                   "omitempty": True},
        "shared": {"type": "object", "goType": "*shared.Options", "jsonName": "shared",
                   "goField": "Shared", "featureGate": "Sharing", "omitempty": True},
        "shared.depth": {"type": "int64", "goType": "int64", "jsonName": "depth",
                         "goField": "Depth", "from": "Inner (inline)"},
        "shared.style": {"type": "string", "goType": "string", "jsonName": "style",
                         "goField": "Style", "enum": ["plain", "fancy"]},
        "shared.level": {"type": "uint32", "goType": "Level", "jsonName": "level",
                         "goField": "Level"},
        "shared.color": {"type": "string", "goType": "string", "jsonName": "color",
                         "goField": "Color", "enum": ["red", "green"], "omitempty": True},
        "shared.theme": {"type": "string", "goType": "string", "jsonName": "theme",
                         "goField": "Theme", "enum": ["dark", "light"]},
        "shared.engine": {"type": "string", "goType": "Engine", "jsonName": "engine",
                          "goField": "Engine", "enum": ["v8", "spidermonkey"]},
        "shared.flavors": {"type": "[]string", "goType": "[]string", "jsonName": "flavors",
                           "goField": "Flavors", "itemEnum": ["x", "y", "z"]},
        "rules": {"type": "[]object", "goType": "[]Rule", "jsonName": "rules",
                  "goField": "Rules", "itemGoType": "Rule"},
        "rules[].name": {"type": "string", "goType": "string", "jsonName": "name",
                         "goField": "Name"},
        "rules[].weight": {"type": "int32", "goType": "int32", "jsonName": "weight",
                           "goField": "Weight", "omitempty": True},
        "Ratio": {"type": "float", "goType": "float64", "jsonName": "Ratio", "goField": "Ratio"},
        "limits": {"type": "map[string][]string", "goType": "map[string][]string",
                   "jsonName": "limits", "goField": "Limits"},
    }
    assert mirrors.source() == {
        module: {"repo": "kubernetes/" + module.rsplit("/", 1)[-1], "tag": TAG,
                 "commit": commit_of(node_mirrors[module]), "files": files}
        for module, files in (("example.com/app", ["config/v1/register.go", "config/v1/types.go"]),
                              ("example.com/lib", ["shared/types.go"]),
                              ("k8s.io/apimachinery", ["pkg/apis/meta/v1/types.go"]))}


def test_a_type_with_its_own_json_form_stops_the_script(tmp_path):
    types = ("package v1\n\ntype Config struct {\n\tWhen Stamp `json:\"when\"`\n}\n\n"
             "type Stamp struct{ raw string }\n\n"
             "func (s *Stamp) UnmarshalJSON(b []byte) error { return nil }\n")
    mirrors = uf.Mirrors({"example.com/app": git_repo(tmp_path / "app", {
        "config/v1/register.go": APP_REGISTER, "config/v1/types.go": types})}, TAG)
    with pytest.raises(SystemExit, match=r"example.com/app/config/v1.Stamp reads its own JSON"):
        uf.NodeFacts(mirrors).kind("example.com/app/config/v1", "Config")


def parsed(src: str) -> uf.GoPackage:
    pkg = uf.GoPackage("example.com/p", "example.com")
    pkg.add(uf.GoParser(src, "p.go").file())
    return pkg


def test_constants_that_merely_end_alike_are_no_values():
    pkg = parsed('package p\n\nconst (\n\tTLSCertKey = "tls.crt"\n\tTokenKey = "token"\n)\n\n'
                 'const SSHKey = "ssh"\n\nconst (\n\tRedColor = "red"\n\tBlueColor = BlueName\n'
                 '\tBlueName = "blue"\n)\n')
    assert uf.named_constants(pkg, "Key") == []
    assert [c.name for c in uf.named_constants(pkg, "Color")] == ["RedColor", "BlueColor"]
    assert [pkg.const_value(c) for c in uf.named_constants(pkg, "Color")] == ["red", "blue"]


def test_doc_values_rules_in_order():
    assert uf.doc_values(("Valid values are `a` and `b`.", "The driver (c or d).")) == ["a", "b"]
    assert uf.doc_values(("The driver (c, d or e).",)) == ["c", "d", "e"]
    assert uf.doc_values(('May be one of', '"", "No": no swap.', '"Some": some swap.',
                          'Valid values are `x`.')) == ["", "No", "Some"]
    # an example of JSON is no list of values
    assert uf.doc_values(('Example:', '"key": {', '"a": true', '"b": false,', '}')) == []


def test_merge_written_keeps_written_keys_of_paths_still_there():
    data = {"KubeletConfiguration": {"fields": {"a": {"type": "string"}}},
            "KubeProxyConfiguration": {"fields": {}}}
    old = {"KubeletConfiguration": {"fields": {
        "a": {"type": "int32", "note": "n", "documentedDefault": "1", "enum": ["x"]},
        "gone": {"type": "string", "note": "lost"}, "plain": {"type": "bool"}}}}
    assert uf.merge_written(data, old) == ["KubeletConfiguration: gone"]
    assert data["KubeletConfiguration"]["fields"] == {
        "a": {"type": "string", "note": "n", "documentedDefault": "1"}}


def register(pkg: str, kind: str) -> str:
    return (APP_REGISTER.replace("package v1", f"package {pkg}")
            .replace('Version: "v1"', f'Version: "{pkg}"').replace("&Config{}", f"&{kind}{{}}"))


def test_node_command_reads_the_staging_mirrors(tmp_path, capsys):
    kubelet = ("package v1beta1\n\nimport metav1 \"k8s.io/apimachinery/pkg/apis/meta/v1\"\n\n"
               "type KubeletConfiguration struct {\n\tmetav1.TypeMeta `json:\",inline\"`\n"
               "\tPort int32 `json:\"port,omitempty\"`\n}\n")
    proxy = "package v1alpha1\n\ntype KubeProxyConfiguration struct {\n\tMode string `json:\"mode\"`\n}\n"
    mirrors = tmp_path / "mirrors"
    git_repo(mirrors / "kubernetes+kubelet" / "repo", {
        "config/v1beta1/types.go": kubelet,
        "config/v1beta1/register.go": register("v1beta1", "KubeletConfiguration")})
    git_repo(mirrors / "kubernetes+kube-proxy" / "repo", {
        "config/v1alpha1/types.go": proxy,
        "config/v1alpha1/register.go": register("v1alpha1", "KubeProxyConfiguration")})
    git_repo(mirrors / "kubernetes+apimachinery" / "repo", {"pkg/apis/meta/v1/types.go": META})
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"KubeletConfiguration": {"fields": {
        "port": {"type": "int32", "documentedDefault": "10250"},
        "address": {"type": "string", "note": "gone"}}}}))
    assert uf.main(["node", "--mirrors", str(mirrors), "--tag", TAG,
                    "--merge-from", str(old)]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert sorted(data["source"]["staging"]) == ["k8s.io/apimachinery", "k8s.io/kube-proxy",
                                                 "k8s.io/kubelet"]
    assert data["source"]["by"] == "scripts/upstream_facts.py"
    assert data["KubeletConfiguration"]["apiVersion"] == "widget.example.com/v1beta1"
    assert data["KubeletConfiguration"]["fields"]["port"] == {
        "type": "int32", "goType": "int32", "jsonName": "port", "goField": "Port",
        "omitempty": True, "documentedDefault": "10250"}
    assert list(data["KubeletConfiguration"]["fields"]) == ["kind", "apiVersion", "port"]
    assert data["KubeProxyConfiguration"]["fields"] == {"mode": {
        "type": "string", "goType": "string", "jsonName": "mode", "goField": "Mode"}}
    assert err == "not kept (no such path any more): KubeletConfiguration: address\n"


# -- coredns, flannel ---------------------------------------------------------------------------

def test_coredns_reads_directives_and_block_keywords(tmp_path, monkeypatch):
    health = ('package health\n\nconst (\n\tlameduck = "lameduck"\n)\n\n'
              'func parse(c *caddy.Controller) error {\n\tfor c.NextBlock() {\n'
              '\t\tswitch c.Val() {\n\t\tcase lameduck:\n\t\t\targs := c.RemainingArgs()\n'
              '\t\t\tswitch len(args) {\n\t\t\tcase 0:\n\t\t\t}\n'
              '\t\tcase "probe", "path":\n\t\tdefault:\n\t\t}\n\t}\n\treturn nil\n}\n')
    git_dir = git_repo(tmp_path / "coredns", {
        "plugin.cfg": "# comment\nmetadata:metadata\nhealth:health\n"
                      "prometheus:github.com/coredns/coredns/plugin/metrics\n",
        "plugin/health/setup.go": health,
        "plugin/health/setup_test.go": 'package health\n\nfunc t() { switch c.Val() {\n'
                                       'case "test": } }\n',
        "plugin/metrics/setup.go": "package metrics\n"}, tag="v1.0.0")
    monkeypatch.setattr(uf, "PLUGINS", ("health", "prometheus"))
    data = uf.coredns(git_dir, "v1.0.0")
    assert data["directives"] == ["metadata", "health", "prometheus"]
    assert data["options"] == {"health": ["lameduck", "probe", "path"], "prometheus": []}
    assert data["source"]["commit"] == subprocess.run(
        ["git", f"--git-dir={git_dir}", "rev-parse", "v1.0.0^{commit}"], check=True,
        capture_output=True, text=True).stdout.strip()


def test_flannel_reads_net_conf_and_vxlan_keys(tmp_path):
    config = ("package subnet\n\ntype Config struct {\n\tNetwork ip.IP4Net\n"
              "\tSubnetLen uint `json:\"SubnetLen\"`\n\tEnableIPv6 bool `json:\",omitempty\"`\n"
              "\tBackendType string `json:\"-\"`\n\tBackend json.RawMessage `json:\",omitempty\"`\n}\n")
    vxlan = ("package vxlan\n\ntype VXLANConfig struct {\n\tVNI int\n"
             "\tPort int `json:\"Port\"`\n}\n")
    git_dir = git_repo(tmp_path / "flannel", {"pkg/subnet/config.go": config,
                                              "pkg/backend/vxlan/vxlan.go": vxlan}, tag="v0.1.0")
    data = uf.flannel(git_dir, "v0.1.0")
    assert data["net_conf_keys"] == ["Network", "SubnetLen", "EnableIPv6", "Backend"]
    assert data["backends"] == {"vxlan": ["Type", "VNI", "Port"]}
