from __future__ import annotations

from pathlib import Path

import pytest

from atlasops.errors import ImportRejected, InputError
from atlasops.leads import import_csv, list_leads
from atlasops.ledger import Ledger
from atlasops.workspace import Workspace
from tests.conftest import write_csv

GOOD = [
    ["ann@cpa-firm.example", "Ann Lee", "Lee CPA", "cpa", "wimper"],
    ["bob@brokers.example", "Bob Kim", "Kim Brokers", "Broker", "bbh"],
    ["cy@cfo.example", "Cy Ng", "", "fractional_cfo", ""],
]


def test_import_creates_leads_and_a_receipt(ws: Workspace, ledger: Ledger, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "leads.csv", GOOD)
    report = import_csv(ledger, ws.config, path, actor="t", business="wimper")
    assert (report.created, report.updated, report.unchanged) == (3, 0, 0)
    rows = list_leads(ledger)
    assert [r["email"] for r in rows] == [g[0] for g in GOOD]
    assert rows[1]["segment"] == "broker"
    assert rows[2]["business"] == "wimper"  # the --business default
    assert rows[0]["status"] == "new" and rows[0]["source"] == "csv:leads.csv"
    assert report.receipt_id is not None
    receipt = ledger.query("SELECT kind, outcome FROM receipts WHERE id=?", (report.receipt_id,))
    assert tuple(receipt[0]) == ("leads.import", "ok")


def test_reimport_is_idempotent(ws: Workspace, ledger: Ledger, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "leads.csv", GOOD)
    import_csv(ledger, ws.config, path, actor="t")
    events_before = ledger.count("events")
    again = import_csv(ledger, ws.config, path, actor="t")
    assert (again.created, again.updated, again.unchanged) == (0, 0, 3)
    assert again.receipt_id is None
    assert ledger.count("events") == events_before
    assert ledger.count("leads") == 3


def test_changed_rows_become_updates_matched_case_insensitively(
        ws: Workspace, ledger: Ledger, tmp_path: Path) -> None:
    import_csv(ledger, ws.config, write_csv(tmp_path / "a.csv", GOOD), actor="t")
    changed = [["ANN@cpa-firm.example", "Ann Lee-Park", "Lee CPA", "cpa", "wimper"]]
    report = import_csv(ledger, ws.config, write_csv(tmp_path / "b.csv", changed), actor="t")
    assert (report.created, report.updated) == (0, 1)
    ann = list_leads(ledger)[0]
    assert ann["name"] == "Ann Lee-Park"
    assert ledger.count("leads") == 3
    last_lead_event = ledger.events(kind="lead.updated")[-1]
    assert last_lead_event.payload["changes"] == {"name": "Ann Lee-Park"}


@pytest.mark.parametrize(
    ("row", "column", "reason"),
    [
        (["not-an-email", "X", "", "", ""], "email", "@-sign"),
        (["", "X", "", "", ""], "email", "required"),
        (["z@z.example", "X", "", "", "nope"], "business", "not a business"),
        (["z@z.example", "X\x07", "", "", ""], "name", "control"),
        (["z@z.example", "X" * 501, "", "", ""], "name", "longer than"),
        (["z@z.example", "X", "", "c p a!", ""], "segment", "letters"),
        (["ann@cpa-firm.example", "dup", "", "", ""], "email", "duplicate of the address"),
    ],
)
def test_one_bad_row_rejects_the_whole_batch(ws: Workspace, ledger: Ledger, tmp_path: Path,
                                             row: list[str], column: str, reason: str) -> None:
    path = write_csv(tmp_path / "bad.csv", [*GOOD, row])
    with pytest.raises(ImportRejected) as info:
        import_csv(ledger, ws.config, path, actor="t")
    errors = info.value.details["errors"]
    assert errors[0]["row"] == 5 and errors[0]["column"] == column
    assert reason in errors[0]["reason"]
    assert info.value.exit_code == 2
    assert ledger.count("events") == 0
    assert ledger.journal.tail().last_id == 0


def test_skip_invalid_imports_the_rest(ws: Workspace, ledger: Ledger, tmp_path: Path) -> None:
    rows = [*GOOD, ["bad@@x", "B", "", "", ""], ["ok@fine.example", "C", "", "", ""]]
    report = import_csv(ledger, ws.config, write_csv(tmp_path / "m.csv", rows), actor="t",
                        skip_invalid=True)
    assert report.created == 4
    assert [e.row for e in report.skipped] == [5]
    assert ledger.count("leads") == 4


def test_status_must_be_known(ws: Workspace, ledger: Ledger, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", [["a@b.example", "bogus"]], header=["email", "status"])
    with pytest.raises(ImportRejected) as info:
        import_csv(ledger, ws.config, path, actor="t")
    assert info.value.details["errors"][0]["column"] == "status"


def test_not_utf8_is_rejected_with_position(ws: Workspace, ledger: Ledger, tmp_path: Path
                                            ) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("email,name\njose@x.example,Jos\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"not UTF-8: invalid byte 0xe9 .*line 2"):
        import_csv(ledger, ws.config, path, actor="t")


def test_bom_is_accepted(ws: Workspace, ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffEmail,Name\nbom@x.example,B\n".encode())
    assert import_csv(ledger, ws.config, path, actor="t").created == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("name,company\nA,B\n", "required column 'email' is missing"),
        ("email,email\na@b.example,c@d.example\n", "appears more than once"),
    ],
)
def test_bad_header(ws: Workspace, ledger: Ledger, tmp_path: Path, content: str,
                    message: str) -> None:
    path = tmp_path / "h.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        import_csv(ledger, ws.config, path, actor="t")


def test_unterminated_quote_rejects_the_file(ws: Workspace, ledger: Ledger,
                                             tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text('email,name\nok@x.example,Ok\nq@x.example,"unterminated\n')
    before = ledger.count("events")
    with pytest.raises(InputError, match="not valid CSV"):
        import_csv(ledger, ws.config, path, actor="t")
    assert ledger.count("events") == before


def test_unknown_default_business(ws: Workspace, ledger: Ledger, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown business"):
        import_csv(ledger, ws.config, write_csv(tmp_path / "x.csv", GOOD), actor="t",
                   business="nope")


def test_extra_columns_are_reported_not_silently_dropped(ws: Workspace, ledger: Ledger,
                                                         tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", [["a@b.example", "x"]], header=["email", "phone"])
    report = import_csv(ledger, ws.config, path, actor="t")
    assert report.ignored_columns == ["phone"]


def test_list_filters_by_segment(ws: Workspace, ledger: Ledger, tmp_path: Path) -> None:
    import_csv(ledger, ws.config, write_csv(tmp_path / "l.csv", GOOD), actor="t")
    assert [r["email"] for r in list_leads(ledger, segment="CPA")] == ["ann@cpa-firm.example"]
