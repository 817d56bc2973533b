"""Figures of a run: percentiles, the summary and its table."""

from __future__ import annotations

from array import array

from .plan import Plan

# ---------------------------------------------------------------------------------------
# The parent: start, watch, report


def _percentiles(samples: array) -> dict:
    s = sorted(samples)
    if not s:
        return {"p50_us": None, "p99_us": None, "p999_us": None, "max_us": None}
    n = len(s)
    at = lambda q: s[min(n - 1, int(q * n))] / 1e3  # noqa: E731
    return {"p50_us": at(0.5), "p99_us": at(0.99), "p999_us": at(0.999), "max_us": s[-1] / 1e3}


def summarize(plan: Plan, pubs: list[dict], recvs: list[dict]) -> dict:
    """The run's figures from its clients' results."""
    sent = sum(p["sent"] for p in pubs)
    t0 = min((p["t_first_ns"] for p in pubs), default=0)
    lat = array("q")
    if plan.mode == "request":
        delivered = sum(p["answered"] for p in pubs)
        t_end = max((p["t_last_ns"] for p in pubs), default=t0)
        for p in pubs:
            lat.frombytes(p["lat"])
    else:
        delivered = sum(r["received"] for r in recvs)
        if not t0:  # sub mode: from the first receipt at a receiver
            t0 = min((r["t_first_ns"] for r in recvs if r["t_first_ns"]), default=0)
        t_end = max((r["t_last_ns"] for r in recvs), default=t0)
        for r in recvs:
            lat.frombytes(r["lat"])
    span = max(t_end - t0, 1) / 1e9 if t0 else 0.0
    out = {
        "mode": plan.mode, "api": plan.api, "publishers": len(pubs), "receivers": len(recvs),
        "size": plan.size, "sent": sent, "delivered": delivered,
        "lost": max(0, sent - delivered) if pubs and plan.receivers else 0,
        "span_s": span,
        "msg_s": delivered / span if span else 0.0,
        "mb_s": delivered * plan.size / span / 1e6 if span else 0.0,
        "sender_cpu_us": (sum(p["cpu_s"] for p in pubs) * 1e6 / sent) if sent else None,
        "receiver_cpu_us": (sum(r["cpu_s"] for r in recvs) * 1e6 / delivered)
        if delivered and recvs else None,
        "reordered": sum(r.get("reordered", 0) for r in recvs),
        "duplicates": sum(r.get("duplicates", 0) for r in recvs),
        "errors": sum(p.get("errors", 0) for p in pubs) + sum(r.get("errors", 0) for r in recvs),
        **_percentiles(lat),
    }
    if plan.reliable:
        receipts: dict[str, int] = {}
        for p in pubs:
            for k, v in p["receipts"].items():
                receipts[k] = receipts.get(k, 0) + v
        t_conf = max(p["t_confirmed_ns"] for p in pubs)
        out["receipts"] = receipts
        out["unconfirmed"] = sum(p["unconfirmed"] for p in pubs)
        out["confirmed_msg_s"] = receipts.get("DELIVERED", 0) / (max(t_conf - t0, 1) / 1e9)
    if plan.mode == "request":
        out["failed"] = {k: v for p in pubs for k, v in p["failed"].items()}
        out["unanswered"] = sum(p["unanswered"] for p in pubs)
    return out


def _fmt(v, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def table(s: dict) -> str:
    """The final table (plain text, one figure per line, stable labels)."""
    what = {"pub": "best effort (NOTICE)", "reliable": "reliable (ORDER), DELIVERED receipts",
            "request": "request/reply through service workers", "sub": "receivers only"}
    rows = [
        ("mode", f"{s['mode']}: {what[s['mode']]}, {s['api']} SDK"),
        ("clients", f"{s['publishers']} publisher(s) -> {s['receivers']} receiver(s)"),
        ("message size", f"{s['size']} B"),
        ("sent", _fmt(s["sent"])),
        ("delivered", _fmt(s["delivered"])),
        ("lost", _fmt(s["lost"])),
        ("delivered msg/s", _fmt(s["msg_s"])),
        ("delivered MB/s", _fmt(s["mb_s"], ",.2f")),
        ("sender CPU us/msg", _fmt(s["sender_cpu_us"], ",.1f")),
        ("receiver CPU us/msg", _fmt(s["receiver_cpu_us"], ",.1f")),
        ("latency p50 us", _fmt(s["p50_us"])),
        ("latency p99 us", _fmt(s["p99_us"])),
        ("latency p99.9 us", _fmt(s["p999_us"])),
        ("latency max us", _fmt(s["max_us"])),
    ]
    if "receipts" in s:
        rows.append(("receipts", " ".join(f"{k}={v:,}" for k, v in sorted(s["receipts"].items()))
                     or "none"))
        rows.append(("confirmed msg/s", _fmt(s["confirmed_msg_s"])))
        rows.append(("unconfirmed", _fmt(s["unconfirmed"])))
    if "failed" in s:
        rows.append(("failed replies", " ".join(f"{k}={v}" for k, v in s["failed"].items())
                     or "0"))
        rows.append(("unanswered", _fmt(s["unanswered"])))
    rows += [("reordered", _fmt(s["reordered"])), ("duplicates dropped", _fmt(s["duplicates"])),
             ("router errors", _fmt(s["errors"]))]
    if s.get("interrupted"):
        rows.append(("interrupted", "yes: stopped by Ctrl-C, figures up to then"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
