"""An invoice as a file: PDF (fpdf2) and CSV. Amounts stay integer micro-units until they
are written out, as units of the price book's currency with six decimals."""

from __future__ import annotations

import csv
import io

from fpdf import FPDF

from schemas.invoices import Invoice


def units(micros: int) -> str:
    """12345678 -> '12.345678', exactly (no float)."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    return f"{sign}{whole:,}.{frac:06d}"


def filename(invoice: Invoice, ext: str) -> str:
    name = invoice.id if invoice.id != "upcoming" else f"upcoming-{invoice.org_id}"
    return f"{name}.{ext}"


def to_csv(invoice: Invoice) -> str:
    """One row per line, then the subtotal, the credits applied and the total."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["invoice", "org_id", "period_start", "period_end", "status"])
    w.writerow(
        [
            invoice.id,
            invoice.org_id,
            invoice.period_start.isoformat(),
            invoice.period_end.isoformat(),
            invoice.status,
        ]
    )
    w.writerow([])
    w.writerow(["kind", "description", "line_item", "item", "quantity", "amount_micros"])
    for line in invoice.lines:
        w.writerow(
            [
                line.kind,
                line.description,
                line.line_item,
                line.item,
                line.quantity,
                line.amount_micros,
            ]
        )
    w.writerow(["subtotal", "", "", "", "", invoice.subtotal_micros])
    w.writerow(["credits_applied", "", "", "", "", -invoice.credits_applied_micros])
    w.writerow(["total", "", "", "", "", invoice.total_micros])
    return out.getvalue()


def to_pdf(invoice: Invoice) -> bytes:
    """A one-page (or longer) A4 invoice with its lines and totals."""
    pdf = FPDF(format="A4")
    pdf.set_title(f"Invoice {invoice.id}")
    pdf.set_creator("Tally")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    title = "Upcoming invoice" if invoice.status == "upcoming" else f"Invoice {invoice.id}"
    pdf.cell(0, 10, _latin(title), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    period = (
        f"{invoice.period_start:%Y-%m-%d} to {invoice.period_end:%Y-%m-%d} (UTC, end exclusive)"
    )
    for label, value in (
        ("Org", invoice.org_id),
        ("Period", period),
        ("Plan", invoice.plan),
        ("Status", invoice.status),
        ("Issued", f"{invoice.issued_at:%Y-%m-%d %H:%M} UTC" if invoice.issued_at else "-"),
    ):
        pdf.cell(30, 6, label)
        pdf.cell(0, 6, _latin(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    with pdf.table(col_widths=(110, 35, 45), text_align=("LEFT", "RIGHT", "RIGHT")) as table:
        table.row(["Description", "Quantity", "Amount"])
        for line in invoice.lines:
            qty = f"{line.quantity:,}" if line.kind in ("usage", "adjustment") else ""
            table.row([_latin(line.description), qty, units(line.amount_micros)])
    pdf.ln(4)
    for label, micros, bold in (
        ("Subtotal", invoice.subtotal_micros, False),
        ("Credits applied", -invoice.credits_applied_micros, False),
        ("Total", invoice.total_micros, True),
    ):
        pdf.set_font("Helvetica", "B" if bold else "", 11 if bold else 10)
        pdf.cell(145, 7, label, align="R")
        pdf.cell(45, 7, units(micros), align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=8)
    pdf.ln(6)
    pdf.multi_cell(0, 4, "Amounts in units of the price book's currency.")
    return bytes(pdf.output())


def _latin(text: str) -> str:
    """The core PDF fonts cover Latin-1; anything else shows as '?'."""
    return text.encode("latin-1", "replace").decode("latin-1")
