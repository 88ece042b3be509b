"""The fleet-wide offline diff: what the current checkout changes, tenant by tenant.

Every tenant with a stack file is planned twice, offline (:mod:`tenant_infra.planset`):
under the current checkout (its program, its stack files) and under BASE, a git ref
(that tree's program and stack files) or a saved plan set. Resources are matched by
type and name; per tenant the diff lists those added and removed, and for those in
both, the inputs (and options: protect, parent, provider, …) that differ. A secret
input is never shown: a change of its value is said, from keyed digests of it.

Tenants whose changes are the same once their own id is read as ``<tenant>`` form a
group, so a change to a thousand tenants reads as one.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenant_infra.errors import InvalidInput
from tenant_infra.planset import (
    Entry,
    Job,
    PlanCache,
    PlanSet,
    Tree,
    copy_plans,
    git_tree,
    is_plan_set,
    new_salt,
    plan_sets,
)

PLACEHOLDER = "[secret]"
#: The options compared besides the inputs (as the plan documents name them).
OPTIONS = ("parent", "protect", "retainOnDelete", "deletedWith", "provider", "dependsOn")
HEAD_LABEL = "working tree"


@dataclass(frozen=True)
class Change:
    """One input (a dotted path into it) or option of one resource."""

    key: str
    old: Any = None
    new: Any = None
    #: The input is secret (on either side): its values are never kept, only that it
    #: changed.
    secret: bool = False
    option: bool = False
    #: ``False`` where the key is absent on that side.
    had: bool = True
    has: bool = True

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"key": self.key}
        if self.option:
            document["option"] = True
        if self.secret:
            document["secret"] = True
        if self.had:
            document["old"] = PLACEHOLDER if self.secret else self.old
        if self.has:
            document["new"] = PLACEHOLDER if self.secret else self.new
        return document


@dataclass(frozen=True)
class ResourceChange:
    type: str
    name: str
    changes: tuple[Change, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "name": self.name,
            "changes": [c.to_json() for c in self.changes],
        }


@dataclass(frozen=True)
class TenantDiff:
    """What BASE → current changes for one tenant."""

    tenant: str
    #: ``unchanged``, ``changed``, ``new`` (a stack file only the checkout has),
    #: ``gone`` (only BASE has it) or ``failed`` (it could not be planned on a side).
    status: str
    added: tuple[tuple[str, str], ...] = ()
    removed: tuple[tuple[str, str], ...] = ()
    changed: tuple[ResourceChange, ...] = ()
    #: Why a side could not be planned: ``{"base": …, "head": …}``.
    errors: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "status": self.status,
            "added": [{"type": t, "name": n} for t, n in self.added],
            "removed": [{"type": t, "name": n} for t, n in self.removed],
            "changed": [c.to_json() for c in self.changed],
            "errors": dict(self.errors),
        }

    def anonymous(self) -> TenantDiff:
        """This diff with the tenant's id read as ``<tenant>`` and its ``_`` form as
        ``<tenant_key>``: two spellings stay two (a rename from one to the other is a
        change, never ``<tenant> → <tenant>``)."""
        pattern = _id_pattern(self.tenant)

        def placeholder(match: re.Match[str]) -> str:
            return "<tenant>" if match[0] == self.tenant else "<tenant_key>"

        def sub(value: Any) -> Any:
            if isinstance(value, str):
                return pattern.sub(placeholder, value)
            if isinstance(value, list):
                return [sub(v) for v in value]
            if isinstance(value, dict):
                return {sub(k): sub(v) for k, v in value.items()}
            return value

        return TenantDiff(
            "<tenant>",
            self.status,
            tuple((t, sub(n)) for t, n in self.added),
            tuple((t, sub(n)) for t, n in self.removed),
            tuple(
                ResourceChange(
                    r.type,
                    sub(r.name),
                    tuple(
                        Change(sub(c.key), sub(c.old), sub(c.new), c.secret, c.option, c.had, c.has)
                        for c in r.changes
                    ),
                )
                for r in self.changed
            ),
            {side: sub(text) for side, text in self.errors.items()},
        )


def _id_pattern(tenant: str) -> re.Pattern[str]:
    spellings = sorted({tenant, tenant.replace("-", "_")}, key=len, reverse=True)
    alternatives = "|".join(re.escape(s) for s in spellings)
    return re.compile(rf"(?<![a-z0-9])(?:{alternatives})(?![a-z0-9])")


@dataclass(frozen=True)
class Group:
    """Tenants whose diffs are the same but for their ids; ``diff`` is the one
    tenant's own when the group has one, else with ``<tenant>`` for each id."""

    tenants: tuple[str, ...]
    diff: TenantDiff


@dataclass
class FleetDiff:
    base: str
    head: str
    tenants: list[TenantDiff]

    def count(self, *statuses: str) -> int:
        return sum(1 for t in self.tenants if t.status in statuses)

    @property
    def changed(self) -> bool:
        return any(t.status != "unchanged" for t in self.tenants)

    @property
    def failed(self) -> list[TenantDiff]:
        """Tenants the current checkout cannot plan (BASE's own failures aside)."""
        return [t for t in self.tenants if "head" in t.errors]

    def summary(self) -> dict[str, int]:
        return {
            "tenants": len(self.tenants),
            "changed": self.count("changed"),
            "unchanged": self.count("unchanged"),
            "new": self.count("new"),
            "gone": self.count("gone"),
            "failed": self.count("failed"),
            "resourcesAdded": sum(len(t.added) for t in self.tenants),
            "resourcesChanged": sum(len(t.changed) for t in self.tenants),
            "resourcesRemoved": sum(len(t.removed) for t in self.tenants),
        }

    def groups(self) -> list[Group]:
        """The tenants that are not unchanged, by identical change, largest first."""
        found: dict[str, tuple[list[TenantDiff], TenantDiff]] = {}
        for diff in self.tenants:
            if diff.status == "unchanged":
                continue
            anonymous = diff.anonymous()
            key = json.dumps(anonymous.to_json(), sort_keys=True, default=str)
            found.setdefault(key, ([], anonymous))[0].append(diff)
        groups = [
            Group(tuple(d.tenant for d in members), members[0] if len(members) == 1 else anon)
            for members, anon in found.values()
        ]
        return sorted(groups, key=lambda g: (g.diff.status != "failed", -len(g.tenants), g.tenants))

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "head": self.head,
            "summary": self.summary(),
            "tenants": [t.to_json() for t in self.tenants if t.status != "unchanged"],
            "unchanged": [t.tenant for t in self.tenants if t.status == "unchanged"],
        }


# ------------------------------------------------------------------ comparing plans


def _keyed(document: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for resource in document["resources"]:
        key = (resource["type"], resource["name"])
        if key in found:  # the same type and name under two parents: tell them apart
            key = (resource["type"], f"{resource['name']} (under {resource['parent']})")
        found[key] = resource
    return found


_ABSENT = object()


def _value_changes(path: str, old: Any, new: Any) -> Iterator[Change]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            yield from _value_changes(f"{path}.{key}", old.get(key, _ABSENT), new.get(key, _ABSENT))
    elif old != new:
        yield Change(
            path,
            None if old is _ABSENT else old,
            None if new is _ABSENT else new,
            had=old is not _ABSENT,
            has=new is not _ABSENT,
        )


def compare_resource(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[Change, ...]:
    """The inputs and options of one resource that differ between two plans."""
    changes: list[Change] = []
    old_inputs, new_inputs = old.get("inputs") or {}, new.get("inputs") or {}
    old_secrets, new_secrets = old.get("secrets") or {}, new.get("secrets") or {}
    for key in sorted(set(old_inputs) | set(new_inputs)):
        had, has = key in old_inputs, key in new_inputs
        if key in old_secrets or key in new_secrets:
            # Either side secret: say that it changed, never what it holds.
            if (
                had != has
                or old_secrets.get(key) != new_secrets.get(key)
                or old_inputs.get(key) != new_inputs.get(key)
            ):
                changes.append(Change(key, secret=True, had=had, has=has))
            continue
        changes.extend(
            _value_changes(key, old_inputs.get(key, _ABSENT), new_inputs.get(key, _ABSENT))
        )
    old_options = {"parent": old.get("parent"), **(old.get("options") or {})}
    new_options = {"parent": new.get("parent"), **(new.get("options") or {})}
    for key in OPTIONS:
        if old_options.get(key) != new_options.get(key):
            changes.append(Change(key, old_options.get(key), new_options.get(key), option=True))
    return tuple(changes)


def compare(
    tenant: str, base: Mapping[str, Any] | None, head: Mapping[str, Any] | None
) -> TenantDiff:
    """One tenant's diff from its two plan documents (``None``: no stack file there)."""
    old = _keyed(base) if base is not None else {}
    new = _keyed(head) if head is not None else {}
    added = tuple(sorted(k for k in new if k not in old))
    removed = tuple(sorted(k for k in old if k not in new))
    changed = []
    for key in sorted(k for k in new if k in old):
        changes = compare_resource(old[key], new[key])
        if changes:
            changed.append(ResourceChange(key[0], key[1], changes))
    if base is None:
        status = "new"
    elif head is None:
        status = "gone"
    else:
        status = "changed" if added or removed or changed else "unchanged"
    return TenantDiff(tenant, status, added, removed, tuple(changed))


def compare_sets(
    base: PlanSet, head: PlanSet, unplanned: frozenset[str] = frozenset()
) -> FleetDiff:
    """Every tenant's diff, reading two plans at a time; ``unplanned`` tenants have the
    same stack file under the same program on both sides: unchanged by construction."""
    diffs = []
    for tenant in sorted(set(base.tenants) | set(head.tenants) | unplanned):
        if tenant in unplanned:
            diffs.append(TenantDiff(tenant, "unchanged"))
            continue
        old, new = base.tenants.get(tenant), head.tenants.get(tenant)
        errors = {
            side: entry.error
            for side, entry in (("base", old), ("head", new))
            if entry is not None and entry.error is not None
        }
        if errors:
            diffs.append(TenantDiff(tenant, "failed", errors=errors))
            continue
        diffs.append(compare(tenant, base.plan(tenant), head.plan(tenant)))
    return FleetDiff(base.label, head.label, diffs)


# ------------------------------------------------------------------ the whole run


def plan_checkout(
    project: Path, save: Path | None = None, workers: int | None = None, cache: bool = True
) -> PlanSet:
    """Every tenant of the checkout planned, into ``save`` when given (a plan set that
    :func:`diff` takes as its base). The entries are returned; without ``save`` the
    plans themselves are gone, or in the cache."""
    tree = Tree.of(project, HEAD_LABEL)
    target = _fresh(save) if save else None
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tenant-infra-plans-")))
        store = stack.enter_context(_cache(project)) if cache else None
        digests = tree.stack_digests()
        salt = store.salt if store else new_salt()
        plans, job = _prepare(tree, tree.identity(), digests, salt, store, tmp / "head")
        plan_sets([job] if job else [], workers)
        _merge(plans, job, store)
        if target is not None:
            _write(plans, target)
        return plans


def diff(
    base: str,
    project: Path,
    save: Path | None = None,
    workers: int | None = None,
    cache: bool = True,
) -> FleetDiff:
    """What the checkout at ``project`` changes against ``base`` (a saved plan set's
    folder, else a git ref), for every tenant with a stack file on either side.

    A tenant whose stack file is the same on both sides, under programs of the same
    identity (:meth:`Tree.identity`), is unchanged without being planned. With
    ``cache``, plans made under a program before (by any run, on either side) are
    reused from the project's ``.pulumi-work/plan_cache``."""
    saved = is_plan_set(Path(base))
    if save and saved and save.resolve() == Path(base).resolve():
        raise InvalidInput(f"--save {save}: that is the plan set diffed against")
    head_tree = Tree.of(project, HEAD_LABEL)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tenant-infra-plans-")))
        head_digests = head_tree.stack_digests()
        if saved:
            base_set = PlanSet.open(Path(base))
            base_digests = {t: e.stack for t, e in base_set.tenants.items()}
            base_identity, salt = base_set.identity, base_set.salt
        else:
            base_tree = stack.enter_context(git_tree(project, base))
            base_digests = base_tree.stack_digests()
            base_identity = base_tree.identity()
        target = _fresh(save) if save else None
        store = stack.enter_context(_cache(project)) if cache else None
        if not saved:
            salt = store.salt if store else new_salt()
        head_identity = head_tree.identity()
        # The same program and the same stack file plan the same: no need to look.
        same = frozenset(
            t
            for t, digest in head_digests.items()
            if head_identity == base_identity and base_digests.get(t) == digest
        )
        base_job = None
        if not saved:
            wanted = {t: d for t, d in base_digests.items() if t not in same}
            base_set, base_job = _prepare(base_tree, base_identity, wanted, salt, store, tmp / "b")
        skip = same if saved or target is None else frozenset()
        wanted = {t: d for t, d in head_digests.items() if t not in skip}
        head_set, head_job = _prepare(head_tree, head_identity, wanted, salt, store, tmp / "h")
        plan_sets([j for j in (base_job, head_job) if j is not None], workers)
        _merge(base_set, base_job, store)
        _merge(head_set, head_job, store)
        if saved:  # a saved base's plans of the same tenants are the checkout's too
            for tenant in same:
                entry = base_set.tenants[tenant]
                path = entry.path or base_set.directory / f"{tenant}.json"
                head_set.tenants[tenant] = Entry(entry.stack, entry.error, entry.resources, path)
        if target is not None:
            _write(head_set, target)
        return compare_sets(base_set, head_set, frozenset() if saved else same)


@contextmanager
def _cache(project: Path) -> Iterator[PlanCache | None]:
    store = PlanCache(project / ".pulumi-work" / "plan_cache")
    with store.locked() as found:
        yield found
        if found is not None:
            found.prune()


def _prepare(
    tree: Tree,
    identity: str,
    digests: Mapping[str, str],
    salt: str,
    store: PlanCache | None,
    scratch: Path,
) -> tuple[PlanSet, Job | None]:
    """A side's plan set (what the cache has of it) and the job planning the rest."""
    if store is not None and store.salt == salt:
        found = store.lookup(tree.label, identity, digests)
        missing = sorted(t for t in digests if t not in found.tenants)
        if not missing:
            return found, None
        staged = PlanSet(store.staging(), tree.label, identity, salt)
        return found, Job(tree, staged, missing, digests)
    out = PlanSet(scratch, tree.label, identity, salt)
    return out, Job(tree, out, sorted(digests), digests)


def _merge(plans: PlanSet, job: Job | None, store: PlanCache | None) -> None:
    """A job's plans into its side's set (through the cache, when it was staged there)."""
    if job is None or job.out is plans:
        return
    if store is not None:
        store.store(job.out)
    plans.tenants.update(job.out.tenants)
    shutil.rmtree(job.out.directory, ignore_errors=True)


def _write(plans: PlanSet, target: Path) -> None:
    saved = PlanSet(target, plans.label, plans.identity, plans.salt)
    copy_plans(plans, saved, sorted(plans.tenants))
    saved.save()


def _fresh(folder: Path) -> Path:
    """``folder`` ready for a new plan set: new, empty, or a plan set already (whose
    manifest and plans go; nothing else in it is touched)."""
    if folder.exists():
        if not folder.is_dir() or (any(folder.iterdir()) and not is_plan_set(folder)):
            raise InvalidInput(f"--save {folder}: not an empty folder nor a plan set")
        for old in folder.glob("*.json"):
            old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder
