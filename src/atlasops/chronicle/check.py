"""``atlas chronicle check``: hold a post written by a person or a model to the facts.

It reads the post's numeric claims (``claims.py``) and its sent / posted / fixed /
restored claims, matches each against the day's chronicle, and lists what is
unsupported or contradicted. A post that says "restored from backup" without
naming the backup (or the journal) and the loss boundary of that recovery is
flagged: that is the claim that hides the most.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from .claims import (
    NOT_NOW,
    WORDS,
    Found,
    Said,
    clause_after,
    clause_before,
    denoise,
    numbers,
    read_post,
    to_the_owner,
)

NEGATION = re.compile(r"\b(?:not|never|no|zero|none|nothing|nobody|no one|neither|nor|"
                      r"without|didn't|did not|wasn't|weren't|hasn't|haven't|isn't)\b|n't\b")
# a negation before a verb reaches it unless another clause starts in between
NEGATION_SCOPE = re.compile(r".*\b(?:and|then|so|while|after|before)\b")
# a negation right after a verb, in its object: "sent no emails", "fixed nothing"
NONE_AFTER = re.compile(r"\s+(?:out\s+)?(?:the\s+)?(?:no|zero|none|nothing|nobody|no one|"
                        r"not a single|not any)\b")
# before a participle (an adverb or two may come between), these make it passive: what
# was fixed is before it ("the page was finally fixed"), never after it
PASSIVE = re.compile(r"\b(?:is|are|was|were|be|been|being|get|gets|got|become|becomes|"
                     r"became)(?:\s+(?:[a-z]+ly|now|also|just|still|already|then|not|never|"
                     r"all|both))*\s*$")
# an active verb's object ("we fixed the billing route"): what follows it, unless that
# starts with a preposition or an adverb ("fixed after the rebuild"), up to the first one
_NOT_OBJECT = (r"(?:after|before|when|while|by|in|on|at|with|for|during|once|until|"
               r"because|since|so|then|from|to|via|using|through|thanks|yesterday|today|"
               r"tonight|overnight|again|now|finally|already|itself|themselves)")
OBJECT = re.compile(rf"\s*(?=\S)(?!(?:{_NOT_OBJECT}|[a-z]+ly)\b)(.*?)(?=\b{_NOT_OBJECT}\b|$)")
NO_LOSS = re.compile(r"\bnothing (?:was |is |has been )?lost\b|\bno (?:data |events? |rows? |"
                     r"records? )?(?:was |were |has been |have been )?lost\b|\bwithout (?:any )?"
                     r"(?:data )?loss\b|\bno (?:data )?loss\b|\blost nothing\b")
LOSS = re.compile(r"\blost events?\b|\bevents? [\d., ]+(?:were |was |are )?lost\b|"
                  r"\b(?:could|can|will)(?: not|n't) be recovered\b|\bcannot be recovered\b|"
                  r"\b(?:was|were) not recovered\b|\bnot recoverable\b|\bunrecoverable\b|"
                  r"\brows written after\b|\bdata loss\b|\b(?:was|were) lost\b|"
                  r"\bnothing after (?:event )?[\d,]+ can be known\b")
RESTORE = re.compile(r"\b(?:restored|recovered)\b")  # "can restore": not a claim
FIX = re.compile(r"\b(?:fixed|repaired|back online|came back|comes back|working again|"
                 r"works again)\b")
SENT = r"\b(?:sent|e-?mailed|mailed|send|went out|delivered)\b"
POSTED = r"\b(?:posted|published (?:a |the )?(?:post|tweet|thread))\b"
TEMPORAL = re.compile(r"\b(?:when|until|before|after|once)\b")
STOPWORDS = set("""a an the and or but of to in on at by for from with as is was were be been
being it its this that these those we i our they he she his her their my me you your has have
had did does do done not no never nothing none now today also again finally just still yet
then so very all every everything anything something fixed repaired back online came comes
working works again got get gets become became becomes is are page pages route routes site
sites app application service services system systems thing things issue issues problem
problems bug bugs error errors user users because which who what when there here up down
over into after before once until some more most how restored recovered atlas""".split()) | set(
    WORDS)
LEDGER_WORDS = {"database", "databases", "ledger", "db", "leads", "lead", "sqlite", "index",
                "indexes", "indices", "journal", "file", "data", "table", "tables", "backup"}
ROUTE_WORDS = re.compile(r"\b(?:page|pages|route|routes|site|sites|app|endpoint|url|service)\b")
RECOVERY_NOUNS = re.compile(r"\b(?:database|databases|db|ledger|journal|backups?|sqlite|"
                            r"leads\.db)\b")


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


def facts(chronicle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every number of the chronicle by key; several numbers with one key (drafts held
    for two reasons) add up. Commits per person are ``commits_by:<name>``."""
    out: dict[str, dict[str, Any]] = {}
    every = [*chronicle["numbers"], *chronicle["gate"].get("numbers", []),
             *chronicle["next"].get("numbers", [])]
    for n in every:
        if n["key"] in out and n["value"] is not None and out[n["key"]]["value"] is not None:
            out[n["key"]] = {**out[n["key"]], "value": out[n["key"]]["value"] + n["value"]}
        else:
            out.setdefault(n["key"], n)
    total = out.get("commits_total")
    for name in _authors(chronicle):
        value = None if total is None or total["value"] is None else sum(
            1 for c in chronicle["commits"] if not c["agent"] and name in _names(c["author"]))
        out[f"commits_by:{name}"] = {**(total or {}), "key": f"commits_by:{name}",
                                     "label": f"Commits by {name.title()}", "value": value}
    return out


def _stated(chronicle: dict[str, Any], authors: list[str]) -> dict[tuple[str, int], str]:
    """Counts no fact of the day covers, as the chronicle's sentences read from a receipt
    (or a work-log note) state them ("0 new and 18 updated leads from
    agent-status-updates.csv"): (noun, value) to "receipt #N" or "event #N (a work-log
    note)". A post may repeat what a receipt or a note says."""
    texts = [(row["what"], f"receipt #{row['receipts'][0]}")
             for row in chronicle.get("timeline", [])
             if row.get("count") == 1 and row.get("receipts")]
    for x in [*chronicle.get("built", []), *chronicle["gate"].get("lines", [])]:
        if x.get("receipts"):
            texts.append((x["text"], f"receipt #{x['receipts'][0]}"))
        elif x.get("events"):
            texts.append((x["text"], f"event #{x['events'][0]} (a work-log note)"))
    for i in chronicle["broke"].get("incidents", []):
        if i.get("receipt"):
            texts += [(str(t), f"receipt #{i['receipt']}") for t in (
                *(i.get(k) for k in ("symptom", "recovery_point", "verified", "boundary")),
                *i.get("steps", [])) if t]
    out: dict[tuple[str, int], str] = {}
    for text, where in texts:
        for f in numbers(text, authors):
            if f.key is None:
                out.setdefault((f.noun, f.value), where)
    return out


def _names(author: str) -> set[str]:
    low = author.casefold().strip()
    return {low, low.split(" ")[0]} if low else set()


def _authors(chronicle: dict[str, Any]) -> list[str]:
    names = set(_names(chronicle.get("owner", {}).get("name", "")))
    for c in chronicle["commits"]:
        if not c["agent"]:
            names |= _names(c["author"])
    return sorted(n for n in names if n.isalpha() or " " in n)


def check_post(text: str, chronicle: dict[str, Any]) -> list[Claim]:
    known = facts(chronicle)
    authors = _authors(chronicle)
    stated = _stated(chronicle, authors)
    incidents = chronicle["broke"].get("incidents", [])
    owner = chronicle.get("owner", {}).get("name", "").casefold().split(" ")[0]
    names = _people(chronicle)
    said = read_post(text)
    claims: list[Claim] = []
    for s in said:
        sentence = s.text
        found = numbers(sentence, authors, owner)
        claims += [_number(sentence, f, known, stated) for f in found]
        keys = {f.key for f in found}
        low = _masked(sentence.lower(), found)  # a number's words are its claim alone
        for verb, key, what in ((SENT, "emails_sent", "emails"),
                                (POSTED, "social_posts", "posts")):
            if key not in keys:
                claims += _did(sentence, low, verb, what, known.get(key), owner)
        claims += _fixed(sentence, low, incidents, names)
        claims += _restored(sentence, low, Window(said, s, incidents), chronicle["broke"],
                            names)
    return claims


def _masked(low: str, found: list[Found]) -> str:
    for f in found:
        low = low[:f.start] + " " * (f.end - f.start) + low[f.end:]
    return low


@dataclass
class Window:
    """Where a restore claim's backup and loss boundary may be named. The backup: anywhere
    in the post (its name is the recovery's own). The boundary: in a paragraph of the
    claim's passage (its paragraph and the rest of its section: the seed tells the
    boundary a few paragraphs later), or in any paragraph about the recovery (one that
    names the database, the ledger, the journal, a backup, a restore or a recovery); never
    in a paragraph about another thing (a page, a route, a repair's words) that names no
    database, ledger, journal or backup."""

    said: list[Said]
    at: Said
    incidents: list[dict[str, Any]]

    def post(self) -> str:
        return " ".join(x.text for x in self.said).lower()

    def boundary(self, backup: str | None) -> str:
        paragraphs: dict[tuple[int, int], list[str]] = {}
        for x in self.said:
            paragraphs.setdefault((x.section, x.paragraph), []).append(x.text)
        repaired = set().union(*(_words(i) for i in self.incidents if i["kind"] == "repair"))
        out = []
        for (section, paragraph), texts in paragraphs.items():
            text = " ".join(texts).lower()
            passage = section == self.at.section and paragraph >= self.at.paragraph
            strong = bool(RECOVERY_NOUNS.search(text)) or bool(backup and backup.lower()
                                                               in text)
            other = bool(ROUTE_WORDS.search(text) or _subject(text, set()) & repaired)
            if (strong or not other) and (passage or strong or RESTORE.search(text)):
                out.append(text)
        return " ".join(out)


def _negated(before: str) -> bool:
    """A negation in the clause before the verb, with no other clause started between
    ("not a single email was sent"; not "nothing broke and we sent the emails")."""
    scope = NEGATION_SCOPE.sub("", before)
    return bool(NEGATION.search(scope))


def _number(sentence: str, f: Found, known: dict[str, dict[str, Any]],
            stated: dict[tuple[str, int], str]) -> Claim:
    if f.key is None and (f.noun, f.value) in stated:
        return Claim(sentence, "number", f.noun, f.value, f.value, "supported",
                     f"{stated[f.noun, f.value]} states it")
    if f.key is None:
        return Claim(sentence, "number", f.noun, f.value, None, "unsupported",
                     f"no fact for {f.noun}: the chronicle does not count them")
    fact = known.get(f.key)
    if fact is None:
        return Claim(sentence, "number", f.key, f.value, None, "unsupported",
                     f"no fact for {f.key.replace('_', ' ')} on this day")
    actual = fact["value"]
    if actual is None:
        return Claim(sentence, "number", f.key, f.value, None, "unsupported", fact["display"])
    where = f"{fact['label']} was {actual} ({fact['source']}: {fact['how']})"
    if f.at_least:  # "at least 4": true whenever the day's count (or its bound) reaches 4
        claimed = f"at least {f.value}"
        if f.value <= actual:
            return Claim(sentence, "number", f.key, claimed, actual, "supported",
                         f"{fact['label']} was {fact['display']} ({fact['source']}: "
                         f"{fact['how']})")
        if fact.get("at_least"):
            return Claim(sentence, "number", f.key, claimed, actual, "unsupported",
                         f"{fact['label']} is at least {actual}: {fact['reason']}")
        return Claim(sentence, "number", f.key, claimed, actual, "contradicted", where)
    if fact.get("at_least"):
        if f.value < actual:
            return Claim(sentence, "number", f.key, f.value, actual, "contradicted",
                         f"{fact['label']} was at least {actual} ({fact['reason']})")
        return Claim(sentence, "number", f.key, f.value, actual, "unsupported",
                     f"{fact['label']} is at least {actual}: {fact['reason']}")
    if actual == f.value:
        return Claim(sentence, "number", f.key, f.value, actual, "supported",
                     f"matches {fact['source']}: {fact['how']}")
    return Claim(sentence, "number", f.key, f.value, actual, "contradicted", where)


def _did(sentence: str, low: str, verb: str, what: str, fact: dict[str, Any] | None,
         owner: str) -> list[Claim]:
    """A sent or posted claim without a number: "we sent the partner emails"."""
    for m in re.finditer(verb, low):
        before = clause_before(low, m.start())
        clause = before + low[m.start():]
        if what == "emails" and not re.search(r"prospect|e-?mail|outreach|lead|partner|"
                                              r"campaign|sequence|draft|outbox|nobody|"
                                              r"no one", clause):
            continue
        if to_the_owner(clause, owner):
            continue  # a mail to the owner, for review, is not a send
        if re.match(r"\s*:?\s*unknown\b", low[m.end():]):
            continue  # "Emails sent: unknown (source unavailable: ...)" claims nothing
        negated = _negated(before)
        if m.group(0) == "send" and not negated:
            continue  # "we will send", "to send", "we send none unapproved": no claim
        negated = negated or bool(NONE_AFTER.match(low, m.end()))
        if NOT_NOW.search(before):
            continue
        known = negated and bool(re.search(r"\b(?:known|confirmed)\b", before))
        return [_judge(sentence, what, "none known" if known else
                       "none" if negated else "some", fact)]
    return []


def _judge(sentence: str, what: str, claimed: str, fact: dict[str, Any] | None) -> Claim:
    key = "emails_sent" if what == "emails" else "social_posts"
    if fact is None or fact["value"] is None:
        return Claim(sentence, what, key, claimed, None, "unsupported",
                     "the source is unavailable" if fact is None else fact["display"])
    actual = fact["value"]
    if claimed == "none" and fact.get("at_least"):
        return Claim(sentence, what, key, claimed, actual, "unsupported", fact["display"])
    # "no email is known to have been sent": a claim about the count, which is a lower
    # bound while a send is ambiguous
    if claimed.startswith("none") == (actual == 0):
        return Claim(sentence, what, key, claimed, actual, "supported",
                     f"{fact['label']}: {fact['display']}")
    return Claim(sentence, what, key, claimed, actual, "contradicted",
                 f"{fact['label']} was {fact['display']} ({fact['source']}: {fact['how']})")


def _fixed(sentence: str, low: str, incidents: list[dict[str, Any]],
           names: set[str]) -> list[Claim]:
    m = FIX.search(low)
    if m is None:
        return []
    before = clause_before(low, m.start())
    if NOT_NOW.search(before) and not NEGATION.search(before):
        return []
    after = clause_after(low, m.end())
    none_after = NONE_AFTER.match(after)
    negated = bool(NEGATION.search(before) or none_after)
    if negated and TEMPORAL.search(low):
        return []  # "it did not become fixed when the build completed": about timing
    subject = _fix_subject(before, after, m.group(0), names)
    if re.search(r"\b(?:nothing|none)\b", before) or (
            none_after and re.search(r"\b(?:nothing|none)\b", none_after.group(0))):
        subject = set()  # "nothing was fixed", "we fixed nothing": about every incident
    return [_fix_claim(sentence, subject, negated, incidents, "fixed")]


def _fix_subject(before: str, after: str, verb: str, names: set[str]) -> set[str]:
    """What a fix claim is about: after the verb when it is an adjective ("the repaired
    database"); its object in the active voice ("we fixed the billing route", "the deploy
    repaired the releases page": who did it is not what was fixed); otherwise before it
    ("the page came back", "the page was fixed after the rebuild", "releases page
    fixed")."""
    if re.search(r"\b(?:the|a|an|its)\s*$", before):
        return _subject(after, names)
    obj = OBJECT.match(after)
    if verb in ("fixed", "repaired") and not PASSIVE.search(before) and obj:
        # "we fixed it quickly": an adverb is not what was fixed
        found = {w for w in _subject(obj.group(1), names) if not w.endswith("ly")}
        if found:
            return found
    return _subject(before, names)


def _subject(text: str, names: set[str]) -> set[str]:
    """The content words of ``text``: not stopwords, and not the name of a person or an
    agent (who did something, not what it was done to)."""
    return set(re.findall(r"[a-z][a-z0-9]+", denoise(text))) - STOPWORDS - names


def _people(chronicle: dict[str, Any]) -> set[str]:
    """The words of the owner's name and of every commit author's, agents' too."""
    authors = [chronicle.get("owner", {}).get("name", ""),
               *(c["author"] for c in chronicle["commits"])]
    return {w for a in authors for w in re.findall(r"[a-z][a-z0-9]+", a.casefold())}


def _fix_claim(sentence: str, subject: set[str], negated: bool,
               incidents: list[dict[str, Any]], verb: str) -> Claim:
    """A claim that something was fixed (or restored, for a route), matched by its
    subject's words to the day's repairs and recoveries."""
    fixed = [i for i in incidents if i["outcome"] in ("fixed", "recovered",
                                                      "recovered_with_loss")]
    matching = [i for i in incidents if not subject or subject & _words(i)]
    good = [i for i in matching if i in fixed]
    if negated:
        if good:
            return Claim(sentence, "fixed", "repair", f"not {verb}", len(good),
                         "contradicted", f"{good[0]['title']} (receipt #{good[0]['receipt']})")
        return Claim(sentence, "fixed", "repair", f"not {verb}", 0, "supported",
                     "no repair or recovery fixed it on this day")
    if good:
        return Claim(sentence, "fixed", "repair", verb, len(good), "supported",
                     f"{good[0]['title']} (receipt #{good[0]['receipt']})")
    if matching:
        return Claim(sentence, "fixed", "repair", verb, 0, "contradicted",
                     f"{matching[0]['title']} (receipt #{matching[0]['receipt']})")
    what = " ".join(sorted(subject))
    return Claim(sentence, "fixed", "repair", verb, 0, "unsupported",
                 (f"no repair or recovery on this day is about {what!r}; fixed that day: "
                  + "; ".join(i["title"] for i in fixed)) if fixed else
                 "no repair receipt with outcome fixed (a readback) and no recovery on "
                 "this day")


def _words(incident: dict[str, Any]) -> set[str]:
    text = " ".join(str(incident.get(k) or "") for k in ("title", "route", "symptom",
                                                          "boundary")).lower()
    words = set(re.findall(r"[a-z][a-z0-9]+", text)) - STOPWORDS
    return words | LEDGER_WORDS if incident["kind"] in ("recovery", "detection") else words


def _restored(sentence: str, low: str, window: Window, broke: dict[str, Any],
              names: set[str]) -> list[Claim]:
    masked = LOSS.sub(lambda m: " " * len(m.group(0)), low)
    m = RESTORE.search(masked)
    if m is None:
        return []
    before = clause_before(masked, m.start())
    if NOT_NOW.search(before) and not NEGATION.search(before):
        return []
    if not broke.get("known", True):
        return [Claim(sentence, "restored", "recovery", "restored", None, "unsupported",
                      f"the ledger could not be read ({broke.get('reason')})")]
    after = clause_after(masked, m.end())
    negated = _negated(before) or bool(NONE_AFTER.match(after))
    clause = before + after
    subject = _subject(clause, names)
    incidents = broke.get("incidents", [])
    if not subject & LEDGER_WORDS and (ROUTE_WORDS.search(clause) or any(
            subject & _words(i) for i in incidents if i["kind"] == "repair")):
        # "the releases page was restored": a route came back, which a repair tells
        return [_fix_claim(sentence, subject, negated, incidents, "restored")]
    recoveries = [i for i in incidents if i["kind"] == "recovery"]
    done = [r for r in recoveries if r["outcome"] in ("recovered", "recovered_with_loss")]
    if negated:
        status = "contradicted" if done else "supported"
        return [Claim(sentence, "restored", "recovery", "not restored", len(done), status,
                      f"{len(done)} recovery receipt(s) on this day")]
    if not done:
        why = ("the recovery failed: " + recoveries[0]["boundary"] if recoveries
               else "no recovery receipt on this day")
        return [Claim(sentence, "restored", "recovery", "restored", 0,
                      "contradicted" if recoveries else "unsupported", why)]
    post = window.post()
    named = [r for r in done if (r["backup"] or "journal").lower() in post]
    r = (named or done)[0]
    near = window.boundary(r["backup"])
    source = r["backup"] or "the journal (no backup was used)"
    no_loss, loss = bool(NO_LOSS.search(near)), bool(LOSS.search(near))
    if no_loss and r["outcome"] == "recovered_with_loss":
        return [Claim(sentence, "restored", "recovery", "no loss", "with loss", "contradicted",
                      f"the recovery receipt states a loss: {r['boundary']}")]
    if loss and not no_loss and r["outcome"] == "recovered":
        return [Claim(sentence, "restored", "recovery", "with loss", "no loss", "contradicted",
                      f"the recovery receipt says: {r['boundary']}")]
    missing = [w for w, ok in (
        ((f"the backup ({source})" if r["backup"] else "its source (the journal: no backup "
          "was used)") + " anywhere in the post", named),
        ("the loss boundary in a paragraph about this recovery or in the rest of its "
         "section", no_loss or loss)) if not ok]
    if not missing:
        return [Claim(sentence, "restored", "recovery", "restored", source, "supported",
                      "names the recovery point and the loss boundary")]
    return [Claim(sentence, "restored", "recovery", "restored", source, "unsupported",
                  "says it was restored without naming " + ", or ".join(missing))]


__all__ = ["Claim", "check_post", "facts"]
