"""The expiry report, in kubeadm's ``certs check-expiration`` layout."""

import datetime as dt

from k8simg.pki.manager import CertRecord


def short_duration(d: dt.timedelta) -> str:
    """kubeadm's (apimachinery's) ShortHumanDuration."""
    s = int(d.total_seconds())
    if s < -1:
        return "<invalid>"
    if s < 60:
        return f"{max(s, 0)}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 48 * 3600:
        return f"{s // 3600}h"
    if s < 365 * 86400:
        return f"{s // 86400}d"
    return f"{s // (365 * 86400)}y"


def expiring(records: list[CertRecord], now: dt.datetime, days: int) -> list[CertRecord]:
    """Those that expire within ``days`` of ``now`` (or already have)."""
    limit = now + dt.timedelta(days=days)
    return [r for r in records if r.not_after <= limit]


def as_json(records: list[CertRecord], now: dt.datetime) -> list[dict]:
    return [{"name": r.instance.display, "id": r.instance.id, "file": r.file,
             "subject": r.subject, "issuer": r.issuer, "sans": list(r.sans),
             "ca": r.signer, "is_ca": r.instance.spec.is_ca,
             "not_after": r.not_after.isoformat(),
             "residual_days": round(r.residual(now).total_seconds() / 86400, 2)}
            for r in records]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def expiration_table(records: list[CertRecord], now: dt.datetime) -> str:
    def when(r: CertRecord) -> str:
        return r.not_after.strftime("%b %d, %Y %H:%M UTC")

    leaves = [["CERTIFICATE", "EXPIRES", "RESIDUAL TIME", "CERTIFICATE AUTHORITY"]]
    leaves += [[r.instance.display, when(r), short_duration(r.residual(now)), r.signer or ""]
               for r in records if not r.instance.spec.is_ca]
    cas = [["CERTIFICATE AUTHORITY", "EXPIRES", "RESIDUAL TIME"]]
    cas += [[r.instance.display, when(r), short_duration(r.residual(now))]
            for r in records if r.instance.spec.is_ca]
    return _table(leaves) + "\n\n" + _table(cas)
