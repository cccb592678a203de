"""Invoices: one per org per closed billing period, in integer micro-units."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

InvoiceStatus = Literal["open", "paid", "past_due", "void"]


class InvoiceLine(BaseModel):
    kind: Literal["plan", "proration", "usage", "adjustment"] = Field(
        description="plan: the plan's price; proration: an upgrade's prorated difference;"
        " usage: a metered line of the period; adjustment: usage that reached an earlier,"
        " already invoiced period after its invoice was made (late events, corrections)."
    )
    description: str
    line_item: str = Field(description="llm, tool_calls, storage... (usage and adjustments).")
    item: str = Field(description="The model, connector or storage kind.")
    quantity: int = Field(description="Tokens, calls or byte-seconds (usage and adjustments).")
    amount_micros: int
    period_start: datetime | None = Field(
        description="Adjustments: the start of the period they correct."
    )


class InvoiceBody(BaseModel):
    """What an invoice says; never changes once the invoice is made."""

    id: str = Field(description="`upcoming` for the period in progress.")
    org_id: str
    period_start: datetime
    period_end: datetime = Field(description="Exclusive: the next period starts here.")
    issued_at: datetime | None = Field(description="When it was made; null when upcoming.")
    plan: str = Field(description="The plan in force when the period started.")
    lines: list[InvoiceLine]
    subtotal_micros: int = Field(description="The lines added up.")
    credits_applied_micros: int = Field(description="Prepaid credits that pay for usage.")
    total_micros: int = Field(description="What is due: subtotal less credits applied.")


class Invoice(InvoiceBody):
    status: Literal["open", "paid", "past_due", "void", "upcoming"] = Field(
        description="Set by an admin; `upcoming` for the period in progress."
    )


class InvoiceList(BaseModel):
    invoices: list[Invoice] = Field(description="Newest period first.")


class InvoiceStatusChange(BaseModel):
    status: InvoiceStatus


class InvoicesClosed(BaseModel):
    closed: list[Invoice] = Field(description="The invoices this call made.")
