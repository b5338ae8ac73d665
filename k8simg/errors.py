"""The one exception root of k8simg.

Library code raises these; only the CLI turns them into a message and an exit code.
"""


class K8simgError(Exception):
    """Root of every error k8simg reports to a user."""

    exit_code = 1


class ConfigError(K8simgError):
    """The cluster definition is invalid.

    :param source: the file (or other origin) that was read.
    :param problems: every problem found, each ``(dotted.path, message)``.
    """

    exit_code = 2

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s):"]
        lines += [f"  {path}: {msg}" if path else f"  {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


class PkiError(K8simgError):
    """The PKI on disk is inconsistent or cannot be created.

    :param problems: each ``(file, message)``.
    """

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = [f"PKI: {len(problems)} problem(s):"]
        lines += [f"  {path}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


class RenderError(K8simgError):
    """A node's configuration cannot be rendered (e.g. it is over Nova's user_data limit)."""
