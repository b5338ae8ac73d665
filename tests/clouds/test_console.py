"""The boot watch every cloud runs (:func:`k8simg.clouds.console.wait_boots`), on scripted
looks and a fake clock: a node is done at its login prompt; a failed boot waits, briefly, for
the image's report of Ignition's messages; a stopped machine is said; a silent one times out."""

from k8simg.clouds.base import NodeFailed
from k8simg.clouds.console import REPORT_GRACE_S, Boot, verdict, wait_boots
from tests.support import BOOTED_CONSOLE, FAILED_CONSOLE

SYSTEMD_LINE = "[FAILED] Failed to start ignition-files.service - Ignition (files).\n"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


def watch(script, *, timeout=600):
    """Run wait_boots over ``script``: name -> a function of the clock giving a Boot."""
    clock, settled = Clock(), []
    try:
        wait_boots(list(script), lambda n: script[n](clock.now),
                   settle=lambda n, state, why: settled.append((n, state, why, clock.now)),
                   where=lambda n: f"console of {n}", timeout=timeout, poll=2,
                   clock=clock, sleep=clock.sleep, progress=lambda _m: None)
    except NodeFailed as e:
        return settled, e.failures
    return settled, []


def test_the_later_of_a_failure_and_a_login_prompt_decides():
    """A tail of Nova's console log may hold an earlier boot: the last word counts."""
    failed_then_up = FAILED_CONSOLE + BOOTED_CONSOLE.format(hostname="c-master-0")
    assert verdict(failed_then_up, "c-master-0") == "ready"
    up_then_failed = BOOTED_CONSOLE.format(hostname="c-master-0") + "\n" + FAILED_CONSOLE
    assert verdict(up_then_failed, "c-master-0") == "failed"


def test_verdicts():
    assert verdict(BOOTED_CONSOLE.format(hostname="c-master-0"), "c-master-0") == "ready"
    # another node's prompt is not this node's (Ignition did not set its hostname)
    assert verdict(BOOTED_CONSOLE.format(hostname="localhost"), "c-master-0") is None
    assert verdict(FAILED_CONSOLE, "c-master-0") == "failed"
    assert verdict("[  OK  ] Finished ignition-fetch.service\n", "c-master-0") is None


def test_nodes_are_done_at_their_login_prompt():
    settled, failures = watch({
        "a": lambda t: Boot(BOOTED_CONSOLE.format(hostname="a") if t >= 10 else "booting"),
        "b": lambda t: Boot("", settled="ready")})  # recorded by an earlier look: not again
    assert failures == []
    assert settled == [("a", "ready", "", 10)]


def test_a_failed_boot_waits_for_the_images_report_then_says_why():
    def look(t):  # systemd's line at 4 s, the image's report of Ignition's messages at 30 s
        return Boot("booting\n" + (SYSTEMD_LINE if t >= 4 else "")
                    + (FAILED_CONSOLE if t >= 30 else ""))

    settled, failures = watch({"a": look})
    assert [(n, state, at) for n, state, _, at in settled] == [("a", "failed", 30)]
    (name, report), = failures
    assert name == "a" and report.startswith("its first boot failed; console of a:")
    assert "no space left on device" in report


def test_a_failed_boot_without_the_report_is_said_after_the_grace():
    settled, failures = watch({"a": lambda t: Boot("booting\n" + SYSTEMD_LINE)})
    assert settled[0][1] == "failed" and REPORT_GRACE_S <= settled[0][3] <= REPORT_GRACE_S + 2
    assert "Failed to start ignition-files.service" in failures[0][1]


def test_a_stopped_machine_is_said_at_once_and_not_recorded_as_failed():
    """A stopped machine is started again by the next deploy, not replaced: not settled."""
    settled, failures = watch({"a": lambda t: Boot("half a boot", running=t < 6,
                                                   stopped="its server is SHUTOFF")})
    assert settled == []
    assert failures[0][1].startswith("its server is SHUTOFF; console of a:\n    | half a boot")


def test_a_node_that_never_ends_its_boot_times_out_with_its_last_lines():
    lines = "".join(f"line {i}\n" for i in range(40))
    settled, failures = watch({"a": lambda t: Boot(lines)}, timeout=60)
    assert settled == []
    (name, report), = failures
    assert report.splitlines()[0] == "no login prompt after 60 s; console of a:"
    assert report.splitlines()[1:] == [f"    | line {i}" for i in range(25, 40)]


def test_a_verdict_recorded_earlier_is_reported_without_settling_again():
    settled, failures = watch({"a": lambda t: Boot(FAILED_CONSOLE, settled="failed")})
    assert settled == [] and failures[0][0] == "a"


def test_a_cloud_looks_at_every_pending_node_at_once():
    """Each poll hands the nodes still pending to ``look_all`` in one call (OpenStack asks
    Nova for their consoles concurrently); done nodes are not looked at again."""
    clock, calls = Clock(), []
    script = {"a": lambda t: Boot(BOOTED_CONSOLE.format(hostname="a")),
              "b": lambda t: Boot(BOOTED_CONSOLE.format(hostname="b") if t >= 4 else "booting"),
              "c": lambda t: Boot(BOOTED_CONSOLE.format(hostname="c") if t >= 2 else "booting")}

    def look_all(names):
        calls.append(list(names))
        return [script[n](clock.now) for n in names]

    wait_boots(list(script), lambda n: script[n](clock.now), look_all=look_all,
               settle=lambda *_a: None, where=str, timeout=60, poll=2, clock=clock,
               sleep=clock.sleep)
    assert calls == [["a", "b", "c"], ["b", "c"], ["b"]]
