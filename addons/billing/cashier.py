"""Admission and charging of one request against the pots that pay for it.

Admission (before forwarding): the merchant's wallet must be positive when it pays the provider;
a billed customer must be able to cover the request's worst case (input estimated from the body,
output from max_tokens or the configured default, every unit at the meter's highest rate); a
signed token must stay within its spend cap; a key or customer within its spend and request limits
and its requests and tokens per minute (addons/billing/limits.py). The worst case is held until the
ledger writer has committed the real charge, so concurrent requests see each other's reservations;
every pot and bucket is checked and taken in one atomic call.

A session of many responses (OpenAI Realtime) is admitted response by response: `renew` holds the next
response once the last one's charge is committed, so the balance it is checked against is exact; `top_up`
holds more under a held request as the client adds input to the conversation; `release` gives back a hold no
response used.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from mitmproxy.utils.asyncio_utils import create_task

from addons.auth.account_cache import AccountCache
from addons.billing.charges import RequestCharges, request_charges
from addons.billing.hold_stores import FailoverHolds, LocalHolds, RedisHolds
from addons.billing.holds import (
    MERCHANT,
    NO_SIZES,
    PAYER,
    REQUEST,
    RESERVED,
    TOKENS,
    Bucket,
    InsufficientFunds,
    RateLimited,
    Sizes,
    WalletEmpty,
    WalletStale,
    held_limits,
)
from addons.billing.limits import (
    OwnerLimits,
    RequestLimits,
    merged_heads,
    rate_headers,
    rate_limited,
)
from addons.billing.plan import BillingPlan, byok_fee, worst_case_fee
from addons.core.errors import LedgerUnavailable, PaymentRequired, TooManyRequests
from addons.core.limits import epoch
from addons.core.settings import BillingSettings
from addons.ledger.accounts import token_spent, wallet_state
from addons.ledger.writer import CommitReport, HoldRecord, LedgerWriter
from addons.usage.base import UsageReader
from addons.usage.json_fields import tokens
from pricing import meters
from pricing.money import format_usd
from pricing.usage import TokenUsage

# seconds incurred costs wait to share one hot-store call: most are committed by then and never sent (the balance
# their commit confirms has them); the merchant's wallet is only checked to be positive
ADD_LINGER = 0.1
GLANCE = 0.02  # seconds a positive merchant wallet, as Redis gave it, admits keys without limits on this instance
TRUE_UP_LINGER = 0.05  # seconds tokens-per-minute true-ups wait to go as one change per bucket
PENDING_MAX = 100_000  # requests whose limits await their commit; beyond, the oldest are forgotten (never committed)
CACHED_WALLETS = 10_000  # merchant wallets whose last glance is kept
RENEW_WAIT = 5.0  # seconds `renew` waits for the last response's commit (a ledger outage: it holds on top)

WorstCost = Callable[[int, int], int]  # what a request may cost (nanos) with that many input and output tokens
log = logging.getLogger(__name__)


def _wallet_empty(available: int) -> PaymentRequired:
    return PaymentRequired("insufficient_balance",
                           f"wallet balance is {format_usd(available)} USD; top it up to continue")


def _log_failure(task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("tollgate: hold store update failed: %s", type(task.exception()).__name__)


class Cashier:
    def __init__(self, settings: BillingSettings, keys: AccountCache, writer: LedgerWriter, freshness: float,
                 redis_url: str | None = None, limits: RequestLimits | None = None):
        self.settings = settings
        self.limits = limits or RequestLimits(ZoneInfo("UTC"))
        self.keys = keys
        self.writer = writer
        self.freshness = freshness  # how old a balance may be before admission re-reads it
        local = LocalHolds(settings.hold_ttl_seconds)
        self.holds: LocalHolds | FailoverHolds = (
            FailoverHolds(RedisHolds(redis_url, settings.hold_ttl_seconds), local) if redis_url else local
        )
        self._book = None if redis_url else local.book  # in process: called at once, nothing to await or batch
        self._overdraft: dict[str, int] = {}
        # request id -> (what it holds of its payer, when the hold expires): the holds in place, for metrics
        self.open_holds: dict[str, tuple[int, float]] = {}
        self._adds: list[tuple[str, str, int]] = []  # (request id, merchant wallet, amount), not yet sent
        self._adds_due: asyncio.TimerHandle | None = None  # when they are sent
        self._added: dict[str, None] = {}  # requests whose incurred cost was sent, till their commit releases it
        # request id -> the limits it counts against and what it holds of them, till its commit
        self._limited: dict[str, tuple[tuple[OwnerLimits, ...], Sizes]] = {}
        self._true_ups: dict[Bucket, int] = {}  # not yet sent: each bucket's net change
        self._commit_waits: dict[str, asyncio.Future] = {}  # request id -> `renew` waiting for its commit
        self._glances: dict[str, tuple[int, float]] = {}  # merchant wallet -> (available, until), where positive
        self._glancing: set[str] = set()  # merchant wallets a request is asking Redis for now

    # -- admission -------------------------------------------------------------------------

    async def _fresh_wallet(self, wallet_id: str, overdraft: int = 0, force: bool = False) -> None:
        self._overdraft[wallet_id] = overdraft
        if force or not await self.holds.is_fresh(wallet_id, self.freshness):
            try:
                balance, version = await self.keys.read(wallet_state, wallet_id)
            except LedgerUnavailable:
                if self.keys.serve_stale and await self.holds.is_fresh(wallet_id, math.inf):
                    return  # the ledger is away: its last balance, less what was held since, stands
                raise
            await self.holds.confirm(wallet_id, balance + overdraft, version)

    async def _glance(self, merchant: str) -> int | None:
        """The merchant's wallet for a key without limits, which is only checked to be positive: as Redis last gave
        it, for GLANCE seconds while positive, and while the one request that asks again waits for the answer (under
        load a round trip takes longer than GLANCE). Not exact, and need not be: such a request holds nothing, so
        those in flight on every instance may take the wallet below zero anyway; this adds at most GLANCE's worth
        (and a round trip's) of this instance's requests to them."""
        seen = self._glances.get(merchant)
        if seen is not None and (time.monotonic() < seen[1] or merchant in self._glancing):
            return seen[0]
        self._glancing.add(merchant)
        try:
            available = await self.holds.fresh_available(merchant, self.freshness)
        finally:
            self._glancing.discard(merchant)
        self._saw(merchant, available)
        return available

    def _saw(self, merchant: str, available: int | None) -> None:
        """Redis's figure for the merchant's wallet, glanced at for GLANCE seconds from now while positive."""
        if available is not None and available > 0:
            if len(self._glances) > CACHED_WALLETS:
                self._glances.clear()
            self._glances[merchant] = (available, time.monotonic() + GLANCE)
        else:
            self._glances.pop(merchant, None)

    async def _known_token(self, pot: str, token_id: str, cap: int) -> None:
        """A token's spend is read once, then kept up to date from the writers' commits."""
        if not await self.holds.is_fresh(pot, math.inf):
            generation = await self.holds.generation(pot)
            await self.holds.confirm_new(pot, cap - await self.keys.read(token_spent, token_id), generation)

    async def _known_limits(self, owner: OwnerLimits) -> None:
        """An owner's limit pots are confirmed from the ledger once (per process and period), then kept by the
        commits' spends; again when the hot store lost them."""
        for pot in owner.pots:
            generation = await self.holds.generation(pot.name)
            used = await self.keys.read(pot.used)
            resets = epoch(pot.period.reset) + self.settings.hold_ttl_seconds if pot.period.reset else None
            await self.holds.confirm_new(pot.name, pot.limit - used, generation, resets, pot.limit)
        owner.confirmed = True

    async def admit(self, request_id: str, plan: BillingPlan, reader: UsageReader, cost_of: WorstCost,
                    body_bytes: int = 0) -> list[tuple[bytes, bytes]] | None:
        """Raise PaymentRequired or TooManyRequests, or hold the request's worst case in every pot that pays
        for it or limits it; returns the x-ratelimit-* headers of its rate limits, if it has any."""
        merchant = plan.key.wallet_id
        capped, limited = plan.capped, plan.limited
        if not (plan.bill_customer or capped or limited):
            if self._book is not None:  # in process: nothing to await
                available = self._book.fresh_available(merchant, self.freshness)
            else:
                available = await self._glance(merchant)
            if available is None:
                await self._fresh_wallet(merchant, force=True)
                available = await self.holds.available(merchant)
            if plan.merchant_pays_provider and available <= 0:
                raise _wallet_empty(available)
            return None
        # the worst case: the readers' estimate of the input, and max_tokens or the configured default
        input_tokens = tokens(reader.prompt_chars)
        output_tokens = reader.max_output_tokens or self.settings.default_max_output_tokens
        pots: dict[str, int] = {}
        if plan.bill_customer or capped:
            merchant_amount, payer_amount = self._worst_charges(plan, reader, input_tokens, output_tokens, cost_of)
            if plan.bill_customer:
                await self._fresh_wallet(plan.customer.wallet_id, plan.customer.overdraft_limit_nanos)
                pots[plan.customer.wallet_id] = max(payer_amount, 1)  # an empty balance admits nothing, even a free one
            if capped:
                pot = f"token:{plan.token.token_id}"
                await self._known_token(pot, plan.token.token_id, plan.token.spend_cap_nanos)
                pots[pot] = max(payer_amount, 1)
        owners = self.limits.owners(plan) if limited else ()
        heads: tuple = ()  # the x-ratelimit-* fields its rate limits answer with
        limits: dict[str, int] | None = None  # pots' limits, where this process holds against them for the first time
        spends = False
        for owner in owners:
            if owner.holds and (plan.bill_customer or owner.holds[0][1] != PAYER):  # a customer's, where billed
                if not owner.confirmed:  # new to this process, or its limits or period changed
                    await self._known_limits(owner)
                    limits = {**(limits or {}), **owner.limit_of}  # a changed limit moves its pot's room (relimit)
                spends = spends or owner.spends
            if owner.heads:
                heads = merged_heads(heads, owner.heads) if heads else owner.heads
        reserved = input_tokens + output_tokens  # what a tokens-per-minute limit holds
        if spends:
            # A spend limit must hold: the input held at a bound (no text has more tokens than bytes), not an estimate
            merchant_amount, payer_amount = self._worst_charges(plan, reader, max(body_bytes, input_tokens),
                                                                output_tokens, cost_of)
            # a spent limit admits nothing, even a free-looking request
            sizes = (1, max(merchant_amount, 1), max(payer_amount, 1) if plan.bill_customer else None, reserved)
        else:
            sizes = (1, 0, None, reserved)
        # the merchant's wallet is checked in the same call: positive when it pays the provider, and fresh
        wallet = (merchant, self.freshness, plan.merchant_pays_provider)
        try:
            try:
                if self._book is not None:  # in process: nothing to await
                    states = self._book.hold(request_id, pots, owners, sizes, limits, wallet)
                else:
                    states = await self.holds.hold(request_id, pots, owners, sizes, limits, wallet)
            except (WalletStale, KeyError) as e:
                states = await self._hold_again(e, request_id, plan, pots, owners, sizes, limits, wallet)
        except WalletEmpty as e:
            raise _wallet_empty(e.available) from None
        except InsufficientFunds as e:
            raise self._short(e, owners, pots) from None
        except RateLimited as e:
            bucket = next(bucket for owner in owners for bucket in owner.buckets if bucket.name == e.bucket)
            if bucket.cost == TOKENS and reserved > bucket.capacity:  # a reservation no minute could let through
                raise self.limits.too_large(bucket, reserved) from None
            raise rate_limited(bucket, e.retry_after_ms, e.remaining) from None
        if pots:  # money set aside (a limit's reservation is none)
            self.open_holds[request_id] = (max(pots.values()), time.monotonic() + self.settings.hold_ttl_seconds)
        if owners:
            self._remember(self._limited, request_id, (owners, sizes))
        if plan.bill_customer:
            expires = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=self.settings.hold_ttl_seconds)
            self.writer.submit(HoldRecord(request_id, plan.customer.wallet_id, pots[plan.customer.wallet_id], expires))
        return rate_headers(heads, states) if heads else None

    async def _hold_again(self, e: Exception, request_id: str, plan: BillingPlan, pots: dict[str, int],
                          owners: tuple[OwnerLimits, ...], sizes: Sizes, limits: dict[str, int] | None,
                          wallet: tuple[str, float, bool]) -> list:
        """The hold `admit` tried was refused for want of a figure (`e`): the merchant's wallet was stale
        (WalletStale), or the hot store lost a pot (KeyError: flushed). It is read from the ledger again and the
        hold tried again, twice at most."""
        merchant = wallet[0]
        for _ in range(2):
            if isinstance(e, WalletStale):
                await self._fresh_wallet(merchant, force=True)
                wallet = (merchant, math.inf, plan.merchant_pays_provider)  # as read (or kept in an outage)
            else:
                await self._confirm_again(plan, owners)
            try:
                return await self.holds.hold(request_id, pots, owners, sizes, limits, wallet)
            except (WalletStale, KeyError) as again:
                e = again
        raise LedgerUnavailable("ledger_unavailable", "balances could not be confirmed; retry")

    async def _confirm_again(self, plan: BillingPlan, owners: tuple[OwnerLimits, ...]) -> None:
        """The hot store lost a pot the request holds against (flushed): each is confirmed from the ledger again."""
        if plan.bill_customer:
            await self._fresh_wallet(plan.customer.wallet_id, plan.customer.overdraft_limit_nanos, force=True)
        if plan.capped:
            await self._known_token(f"token:{plan.token.token_id}", plan.token.token_id, plan.token.spend_cap_nanos)
        for owner in owners:
            await self._known_limits(owner)

    def _short(self, e: InsufficientFunds, owners: tuple[OwnerLimits, ...],
               pots: dict[str, int]) -> PaymentRequired | TooManyRequests:
        """The refusal of a hold a pot could not take: a limit reached, or a balance or token cap too low."""
        if limit := next((limit for owner in owners for limit in owner.pots if limit.name == e.pot), None):
            return self.limits.reached(limit, e.available)
        whose = "token spend cap" if e.pot.startswith("token:") else "customer balance"
        return PaymentRequired(
            "insufficient_balance",
            f"{whose} available is {format_usd(e.available)} USD (after open holds); "
            f"this request may cost up to {format_usd(pots[e.pot])} USD",
        )

    async def top_up(self, request_id: str, plan: BillingPlan, reader: UsageReader, cost_of: WorstCost,
                     extra_input_tokens: int) -> None:
        """A request already held will read `extra_input_tokens` more input than `reader.prompt_chars` says (a
        Realtime session's next response, as the client adds audio or items): its worst case grows by what they
        may cost, held on the same pots as its admission (balance, token cap, spend limits), checked as admission
        checks. No request is counted again and no rate limit taken. Raises PaymentRequired as `admit` does."""
        if extra_input_tokens <= 0 or not plan.holds:
            return
        base = tokens(reader.prompt_chars)
        output_tokens = reader.max_output_tokens or self.settings.default_max_output_tokens
        before = self._worst_charges(plan, reader, base, output_tokens, cost_of)
        after = self._worst_charges(plan, reader, base + extra_input_tokens, output_tokens, cost_of)
        merchant, payer = after[0] - before[0], after[1] - before[1]
        pots: dict[str, int] = {}
        if plan.bill_customer and payer > 0:
            pots[plan.customer.wallet_id] = payer
        if plan.capped and payer > 0:
            pots[f"token:{plan.token.token_id}"] = payer
        owners = self.limits.owners(plan) if plan.limited else ()
        # a limit holds the merchant's or the payer's difference (a customer's, where billed); no request again
        for pot, amount in held_limits(owners, (0, merchant, payer if plan.bill_customer else None, 0)):
            if amount > 0:
                pots[pot] = amount
        if not pots:
            return
        for _ in range(3):
            try:
                await self.holds.hold(request_id, pots)
                break
            except KeyError:  # a pot lost (flushed), or a new period's: confirmed again
                await self._confirm_again(plan, owners)
            except InsufficientFunds as e:
                raise self._short(e, owners, pots) from None
        else:
            raise LedgerUnavailable("ledger_unavailable", "balances could not be confirmed; retry")
        if (held := self.open_holds.get(request_id)) is not None:
            self.open_holds[request_id] = (held[0] + max(pots.values()), held[1])
        if plan.bill_customer and (amount := pots.get(plan.customer.wallet_id)):
            expires = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=self.settings.hold_ttl_seconds)
            self.writer.submit(HoldRecord(request_id, plan.customer.wallet_id, amount, expires, added=True))

    async def renew(self, finished_id: str, request_id: str, plan: BillingPlan, reader: UsageReader,
                    cost_of: WorstCost, wait: float = RENEW_WAIT) -> None:
        """The next response of a session: wait until `finished_id` (its last response, already submitted to
        the ledger writer) is committed and its hold released, then admit `request_id` as `admit` does (and
        raise as it does). Waiting makes the check exact: the balance then holds the real charge, not the
        finished response's worst case besides the next one's."""
        settling = finished_id in self.open_holds or bool(
            held_limits(*self._limited.get(finished_id, ((), NO_SIZES))))  # money or a limit's room
        if settling and not self.writer.failing:  # in a ledger outage no commit comes: hold beside it at once
            future = self._commit_waits.setdefault(finished_id, asyncio.get_running_loop().create_future())
            try:
                await asyncio.wait_for(asyncio.shield(future), wait)
            except TimeoutError:
                log.warning("tollgate: request %s not committed within %.0f s; the next hold is taken beside it",
                            finished_id, wait)
            finally:
                self._commit_waits.pop(finished_id, None)
        await self.admit(request_id, plan, reader, cost_of)

    def release(self, request_id: str) -> asyncio.Task:
        """Give back the hold of a request that never ran (a session that ended before its next response);
        the hot store's part runs in the background: await the task where the room must be back at once."""
        self.open_holds.pop(request_id, None)
        self._limited.pop(request_id, None)
        return self._background(self.holds.release(request_id))

    @staticmethod
    def _remember(table: dict, request_id: str, value) -> None:
        table[request_id] = value
        if len(table) > PENDING_MAX:  # requests that never commit (a ledger outage): forget the oldest
            del table[next(iter(table))]

    def _worst_charges(self, plan: BillingPlan, reader: UsageReader, input_tokens: int, output_tokens: int,
                       cost_of: WorstCost) -> tuple[int, int]:
        """(the merchant's, the payer's) charge for that many tokens: the payer is the billed customer (its
        meter's fee at the highest rate, plus a BYOK fee), else the merchant."""
        cost = cost_of(input_tokens, output_tokens)
        merchant = cost if plan.merchant_pays_provider else (0 if plan.bill_customer else self._byok(cost))
        if not plan.bill_customer:
            return merchant, merchant
        usage = TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens)
        units = meters.units_of(plan.meter, reader.measured(usage))  # audio duration: not known yet
        return merchant, worst_case_fee(plan.meter, units, cost) + (self._byok(cost) if plan.byok else 0)

    def _byok(self, cost_nanos: int) -> int:
        return byok_fee(cost_nanos, self.settings.byok_fee_percent, self.settings.byok_fee_per_request_nanos)

    # -- charging --------------------------------------------------------------------------

    def charges(self, request_id: str, plan: BillingPlan, cost_nanos: int, billable: bool) -> RequestCharges:
        """What a finished request is charged now (addons.billing.charges.request_charges); the merchant's
        debit is held until committed."""
        charged = request_charges(plan, cost_nanos, billable, self.settings)
        if charged.merchant_nanos > 0:
            if self._adds_due is None:
                self._adds_due = asyncio.get_running_loop().call_later(ADD_LINGER, self._flush_adds)
            self._adds.append((request_id, plan.key.wallet_id, charged.merchant_nanos))
        return charged

    def used_tokens(self, request_id: str, tokens: int) -> None:
        """A finished request used `tokens` (input and output): its tokens-per-minute reservation is trued up."""
        limited = self._limited.get(request_id)  # kept for the commit's settle
        if limited is None or not (delta := tokens - limited[1][RESERVED]):
            return
        if self._book is not None:
            for owner in limited[0]:
                for bucket in owner.token_buckets:
                    self._book.true_up(bucket, delta)
        elif true_ups := [bucket for owner in limited[0] for bucket in owner.token_buckets]:
            if not self._true_ups:
                asyncio.get_running_loop().call_later(TRUE_UP_LINGER, self._flush_true_ups)
            for bucket in true_ups:  # netted: a bucket's true-ups of one linger go to Redis as one change
                self._true_ups[bucket] = self._true_ups.get(bucket, 0) + delta

    def _flush_true_ups(self) -> None:
        true_ups, self._true_ups = self._true_ups, {}
        if changes := [(bucket, delta) for bucket, delta in true_ups.items() if delta]:
            self._background(self.holds.true_up(*changes))

    def _flush_adds(self) -> None:
        """The merchant's incurred costs of the last ADD_LINGER seconds not committed since, to the hot store in one
        call."""
        self._adds_due = None
        if self._adds:
            adds, self._adds = self._adds, []
            for request_id, _, _ in adds:
                self._remember(self._added, request_id, None)
            self._background(self.holds.add(*adds))

    def settled(self, report: CommitReport) -> None:
        """On the event loop: the writer committed; take its balances and drop the requests' holds (in process at
        once, else in one hot-store call in the background)."""
        confirms, spends, released = self._settlement(report)
        if self._book is not None:  # in process: nothing to await, no task to make per commit
            self._released(report, confirms, released, self._book.settle(confirms, spends, released))
        else:
            self._background(self._settle(report, confirms, spends, released))

    def _settlement(self, report: CommitReport) -> tuple[list, tuple, list]:
        """What a commit settles: the wallets' new balances, the spends on limits and token caps, and the requests
        that hold anything (money, a limit's room, an incurred cost sent), to release."""
        if self._adds:  # committed: in the balance confirmed below, never sent (nor would it land after the release)
            committed = set(report.request_ids)
            self._adds = [add for add in self._adds if add[0] not in committed]
        confirms = [(wallet_id, balance + self._overdraft.get(wallet_id, 0), version)
                    for wallet_id, (balance, version) in report.wallets.items()]
        limited, held, added = self._limited, self.open_holds, self._added
        released = [request_id for request_id in report.request_ids
                    if request_id in held or request_id in limited or request_id in added]
        spends: dict[str, int] = defaultdict(int)
        for token_id, amount in report.token_charges.items():
            spends[f"token:{token_id}"] += amount
        for record in report.written:
            if (limits := limited.pop(record.id, None)) is not None:
                owners, sizes = limits
                for owner in owners:
                    for pot, kind in owner.holds:
                        if kind == REQUEST:
                            spends[pot] += 1
                        elif kind == MERCHANT:
                            spends[pot] += record.charged_nanos
                        elif sizes[PAYER] is not None and (fees := report.fees.get(record.id)) is not None:
                            spends[pot] += fees.fee_nanos  # a billed customer's spend limit: the fee it was charged
        return confirms, tuple(spends.items()), released

    async def _settle(self, report: CommitReport, confirms: list, spends: tuple, released: list) -> None:
        available = await self.holds.settle(confirms, spends, released) if confirms or released or spends else []
        self._released(report, confirms, released, available)

    def _released(self, report: CommitReport, confirms: list, released: list, available: list) -> None:
        """After the hot store settled (the spends landed before the holds went, or the room would show twice):
        the glanced wallets' figures, and the released requests forgotten here (`renew` waits while a hold is
        open here)."""
        for (wallet_id, _, _), figure in zip(confirms, available, strict=True):
            if wallet_id in self._glances:  # a wallet's figure as a glance would read it now
                self._saw(wallet_id, figure)
        held, limited, added = self.open_holds, self._limited, self._added
        for request_id in released:
            held.pop(request_id, None)
            limited.pop(request_id, None)
            added.pop(request_id, None)
        if self._commit_waits:
            for request_id in report.request_ids:
                if (future := self._commit_waits.get(request_id)) is not None and not future.done():
                    future.set_result(None)

    def holds_in_place(self) -> tuple[int, int]:
        """How many of this process's requests hold money, and how much in all (nanos). Called from the metrics
        thread: it reads a copy of the table (taken at once under the GIL), and forgets the holds that expired
        unreleased (a request refused after its admission), as the hold stores do."""
        now = time.monotonic()
        amounts = []
        for request_id, (amount, expires) in list(self.open_holds.items()):
            if expires > now:
                amounts.append(amount)
            else:
                self.open_holds.pop(request_id, None)
        return len(amounts), sum(amounts)

    @property
    def redis_fallback(self) -> bool:
        """Redis is configured but away: holds are kept in this process until it answers."""
        return isinstance(self.holds, FailoverHolds) and self.holds.falling_back

    @staticmethod
    def _background(coro) -> asyncio.Task:
        """Hot-store work the hook need not wait for; a failure is logged and the hold then expires."""
        task = create_task(coro, name="tollgate-holds", keep_ref=True)
        task.add_done_callback(_log_failure)
        return task

    async def close(self) -> None:
        await self.holds.close()
