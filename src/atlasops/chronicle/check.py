"""``atlas chronicle check``: hold a post written by a person or a model to the facts.

It extracts the numeric claims ("8 commits", "Emails sent: 0") and the
sent / posted / fixed / restored claims, matches each against the day's
chronicle, and lists what is unsupported or contradicted. A post that says
"restored from backup" without naming the backup or the loss boundary is
flagged, because that is the claim that hides the most.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

NOUNS: list[tuple[str, str]] = [
    (r"agent jobs?|jobs?(?: run)?", "jobs_run"),
    (r"prospects?(?: added)?|new leads?", "prospects_added"),
    (r"(?:prospect )?emails?(?: sent)?|sends?", "emails_sent"),
    (r"social posts?|public posts?|posts?", "social_posts"),
    (r"content published or deployed receipts?|deploy(?:ment)? receipts?|deploys?",
     "content_or_deploys"),
    (r"content drafts?|articles?(?: drafts?)?", "content_drafts"),
    (r"validated backups?|backups?(?: validated)?", "backups_validated"),
    (r"checks? failed|failed checks?|failing checks?", "checks_failed"),
    (r"checks?(?: run)?", "checks_run"),
    (r"agent commits?", "commits_agent"),
    (r"commits?(?: total)?", "commits_total"),
]
NUMBER = r"(\d[\d,]*|zero)"
# "prospect emails" are emails, not prospects: a noun followed by another noun is not it
NOT_A_MODIFIER = r"(?!\s+(?:emails?|posts?|sends?|drafts?|packets?|lists?|sequences?))"
WORDS = {"zero": 0, "no": 0}


@dataclass
class Claim:
    text: str
    kind: str
    fact: str
    claimed: Any
    actual: Any
    status: str  # supported | contradicted | unsupported
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sentences(text: str) -> list[str]:
    text = re.sub(r"[*_`#>]", "", text)
    parts = re.split(r"(?<=[.!?])\s+|\n+", text)
    return [p.strip(" -•\t") for p in parts if p.strip(" -•\t")]


def _value(token: str) -> int:
    if token.lower() in WORDS:
        return WORDS[token.lower()]
    return int(token.replace(",", ""))


def check_post(text: str, chronicle: dict[str, Any]) -> list[Claim]:
    numbers = {n["key"]: n for n in chronicle["numbers"]}
    claims: list[Claim] = []
    receipts_by_kind = _receipts(chronicle)
    for sentence in _sentences(text):
        claims += _numeric(sentence, numbers)
        claims += _qualitative(sentence, text, numbers, receipts_by_kind)
    return claims


def _receipts(chronicle: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for item in chronicle["broke"]:
        out.setdefault(item["kind"], []).append(item)
    return out


def _numeric(sentence: str, numbers: dict[str, dict[str, Any]]) -> list[Claim]:
    found: list[Claim] = []
    seen: set[tuple[str, int]] = set()
    low = sentence.lower()
    # "Label: N" (the chronicle's own list style) and "N noun" (prose)
    for pattern, key in NOUNS:
        for m in re.finditer(rf"\b({pattern})\s*:\s*{NUMBER}\b", low):
            _add(found, seen, sentence, key, _value(m.group(2)), numbers)
        for m in re.finditer(rf"\b{NUMBER}\s+(?:new\s+|approved\s+)?({pattern})\b"
                             rf"{NOT_A_MODIFIER}", low):
            _add(found, seen, sentence, key, _value(m.group(1)), numbers)
    agent = re.search(r"\(\s*(\d+)\s+agent\b", low)
    if agent:
        _add(found, seen, sentence, "commits_agent", int(agent.group(1)), numbers)
    return found


def _clause(text: str, at: int) -> str:
    """The clause (between commas, semicolons or dashes) that holds position ``at``."""
    start = max(text.rfind(sep, 0, at) for sep in (",", ";", " - ", " but ")) + 1
    ends = [i for i in (text.find(sep, at) for sep in (",", ";", " - ", " but ")) if i != -1]
    return text[start:min(ends) if ends else len(text)]


def _add(found: list[Claim], seen: set[tuple[str, int]], sentence: str, key: str,
         value: int, numbers: dict[str, dict[str, Any]]) -> None:
    if (key, value) in seen or any(c.fact == key for c in found):
        return
    seen.add((key, value))
    fact = numbers.get(key)
    if fact is None or fact["value"] is None:
        why = "no fact to check it against" if fact is None else fact["display"]
        found.append(Claim(sentence, "number", key, value, None, "unsupported", why))
    elif fact["value"] == value:
        found.append(Claim(sentence, "number", key, value, fact["value"], "supported",
                           f"matches {fact['source']}"))
    else:
        found.append(Claim(sentence, "number", key, value, fact["value"], "contradicted",
                           f"{fact['label']} was {fact['value']} ({fact['source']})"))


def _qualitative(sentence: str, post: str, numbers: dict[str, dict[str, Any]],
                 broke: dict[str, list[dict[str, Any]]]) -> list[Claim]:
    low = sentence.lower()
    out: list[Claim] = []
    for verb, key, what in ((r"\b(sent|send|emailed|mailed)\b", "emails_sent", "emails"),
                            (r"\b(posted|published a post)\b", "social_posts", "posts")):
        if re.search(r"\d", low):
            continue
        m = None
        for candidate in re.finditer(verb, low):
            # the clause that holds the verb: a review mail to the owner is not a send
            clause = _clause(low, candidate.start())
            if what == "emails" and not re.search(r"prospect|email|outreach|lead|partner",
                                                  clause):
                continue
            if re.search(r"\bto (matt|the owner|me|him|her|the founder)\b|for review|"
                         r"for iteration", clause):
                continue
            m = candidate
            break
        if m is None:
            continue
        # negation counts only when it governs the verb ("did not send", "no emails sent")
        before = clause[:clause.find(m.group(0))]
        negated = bool(re.search(r"\b(not|never|no|zero|0|didn't|without|nothing)\b"
                                 r"(\W+\w+){0,3}\W*$", before)) or bool(
            re.search(r"^\W*(no|zero|0)\b", clause))
        fact = numbers.get(key)
        if fact is None or fact["value"] is None:
            out.append(Claim(sentence, what, key, "none" if negated else "some", None,
                             "unsupported", "the source is unavailable"))
        elif negated == (fact["value"] == 0):
            out.append(Claim(sentence, what, key, "none" if negated else "some",
                             fact["value"], "supported", f"{fact['label']}: {fact['value']}"))
        else:
            out.append(Claim(sentence, what, key, "none" if negated else "some",
                             fact["value"], "contradicted",
                             f"{fact['label']} was {fact['value']} ({fact['source']})"))
    if re.search(r"\b(fixed|back online|came back|repaired)\b", low) and not re.search(
            r"\bnot (fixed|repaired)\b", low):
        fixed = [r for r in broke.get("repair", []) if r["outcome"] == "fixed"]
        recovered = [r for r in broke.get("recovery", [])
                     if r["outcome"] in ("recovered", "recovered_with_loss")]
        if fixed or recovered:
            out.append(Claim(sentence, "fixed", "repair", "fixed", len(fixed) + len(recovered),
                             "supported", f"{len(fixed)} fixed repair(s) with a readback"))
        else:
            out.append(Claim(sentence, "fixed", "repair", "fixed", 0, "unsupported",
                             "no repair receipt with outcome fixed (a readback) on this day"))
    if re.search(r"\b(restored|recovered|restore)\b", low):
        recoveries = broke.get("recovery", [])
        lossless = any(r["outcome"] == "recovered" for r in recoveries)
        claims_no_loss = bool(re.search(r"nothing (was )?lost|no (data|loss|rows?|events?) "
                                        r"(was |were )?lost|without (any )?loss|no loss",
                                        post.lower()))
        if recoveries and claims_no_loss and not lossless:
            out.append(Claim(sentence, "restored", "recovery", "no loss", "with loss",
                             "contradicted", "the recovery receipt states a loss: "
                             + str(recoveries[0]["boundary"])))
            return out
        if not recoveries:
            out.append(Claim(sentence, "restored", "recovery", "restored", 0, "unsupported",
                             "no recovery receipt on this day"))
        else:
            names = [r["backup"] for r in recoveries]
            named = any(n and n in post for n in names)
            bounded = bool(re.search(r"\b(lost|loss|boundary|could not be recovered|"
                                     r"not recoverable|unrecoverable|recovery point|"
                                     r"events? \d+)", post.lower()))
            if named and bounded:
                out.append(Claim(sentence, "restored", "recovery", "restored", names,
                                 "supported", "names the backup and the loss boundary"))
            else:
                missing = [w for w, ok in (("the backup", named), ("the loss boundary",
                                                                     bounded)) if not ok]
                out.append(Claim(sentence, "restored", "recovery", "restored", names,
                                 "unsupported", "says it was restored without naming "
                                 + " or ".join(missing) + f" (the receipt names {names[0]})"))
    return out


__all__ = ["Claim", "check_post"]
