"""The one Jinja2 environment for every template (node configs and image files): strict
about undefined names, no autoescaping (the output is YAML, shell and unit files)."""

import jinja2

_env = jinja2.Environment(loader=jinja2.PackageLoader("k8simg.ignition", "templates"),
                          undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                          autoescape=False)


def template(name: str, **context) -> str:
    """Render the template ``name`` (under ``templates/``) with ``context``."""
    return _env.get_template(name).render(**context)
