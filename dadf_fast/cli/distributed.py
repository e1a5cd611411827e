"""The commands under ``torchrun`` (docs/distributed.md): data-parallel ``train`` of one model,
sharded ``test`` and ``predict``, and ``train --category all|a,b`` with the categories spread
over the ranks."""
from __future__ import annotations

import contextlib
import os
import sys

from dadf_fast.cli.errors import EXPECTED_ERRORS, UserError
from dadf_fast.utils import distributed

# the commands that split their work over the processes of a torchrun launch
SHARDED = ("train", "test", "predict")


def on_ranks(args, command) -> None:
    """Run ``command(args)`` as one rank of a torchrun launch: join the process group (gloo;
    NCCL beside it for CUDA devices), this process's device (``cuda`` -> ``cuda:<LOCAL_RANK>``),
    ``args.ranks = (rank, world_size)`` for the command, standard output on rank 0 only
    (errors are printed by every rank)."""
    started, finished = distributed.start(args.device), False
    try:
        args.device = distributed.local_device(args.device)
        args.ranks = distributed.rank_size()
        quiet = open(os.devnull, "w") if args.ranks[0] else None  # noqa: SIM115 - closed below
        try:
            with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
                command(args)
            finished = True
        finally:
            if quiet:
                quiet.close()
    finally:
        if started:
            distributed.stop(finished)


def prepare_out(args, prepare) -> None:
    """``prepare()`` (check and lock ``--out``) on rank 0 alone under ``args.ranks``, its
    verdict on every rank; plainly ``prepare()`` in one process."""
    rank, size = getattr(args, "ranks", (0, 1))
    if size == 1:
        prepare()
        return
    distributed.all_ranks(lambda: prepare() if rank == 0 else None, "checking --out")


def train_many(args, categories, train_one, prepare_out_dir) -> None:
    """Train one model per category into ``--out/<category>``; a category that fails is
    reported in the summary and does not stop the others (exit status 2 then).  Under
    ``torchrun`` the categories are spread over the ranks (rank r trains every
    ``world_size``-th one from the r-th, alone), and the categories left over when their number
    is not a multiple of the world size are trained data-parallel by all ranks; rank 0 prints
    the summary of all.  ``train_one(args)`` trains one category (``cmd_train``),
    ``prepare_out_dir(args, inputs=, resume=)`` checks and locks ``--out``."""
    started, finished = distributed.start(args.device), False
    try:
        _train_many_ranks(args, categories, train_one, prepare_out_dir, *distributed.world())
        finished = True
    finally:
        if started:
            distributed.stop(finished)


def _train_many_ranks(args, categories, train_one, prepare_out_dir, rank: int, size: int) -> None:
    import copy
    import hashlib
    import time

    from dadf_fast.utils.distributed import agree, gather

    if args.val_dir or args.val_mask_dir:
        raise UserError("--val-dir and --val-mask-dir belong to one category: train the categories one at a time")
    if size > len(categories):
        raise UserError(f"{size} processes for {len(categories)} categories: start at most {len(categories)} "
                        "(--nproc-per-node)")
    # every rank must see the same categories and training files (a cheap checksum of the list)
    listing = hashlib.sha256(repr([(c, sorted(os.listdir(os.path.join(args.data, c, "train", "good")))
                                    if os.path.isdir(os.path.join(args.data, c, "train", "good")) else None)
                                   for c in categories]).encode()).hexdigest()
    if len(set(gather(listing))) > 1:
        raise UserError(f"the ranks see different data under {args.data} (categories or training files differ)")
    problem = None
    if rank == 0:  # one rank checks and locks --out; the others wait for its verdict
        try:
            prepare_out_dir(args, inputs=[args.backbone_weights], resume=args.resume if args.method == "dadf" else None)
        except (UserError, *EXPECTED_ERRORS) as exc:
            problem = str(exc)
    problem = agree(problem)
    if problem:
        raise UserError(problem)
    # categories r, r + W, ... of the first W * (C // W) for rank r alone; the C % W left over are
    # trained data-parallel by all ranks together, one after another, so no rank idles while
    # another trains a last category alone
    whole = len(categories) - len(categories) % size
    rows = []
    for cat in categories[rank:whole:size] + categories[whole:]:
        together = cat in categories[whole:] and size > 1
        sub = copy.copy(args)
        sub.category, sub.out = cat, os.path.join(args.out, cat)
        sub.cleanup = contextlib.ExitStack()
        sub.device = distributed.local_device(args.device)
        if together:
            sub.ranks = (rank, size)
        t0 = time.perf_counter()
        where = f" (ranks 0-{size - 1}, data-parallel)" if together else f" (rank {rank})" if size > 1 else ""
        if not together or rank == 0:
            print(f"== {cat}{where}", flush=True)
        quiet = open(os.devnull, "w") if together and rank else None  # noqa: SIM115 - closed below
        try:
            with sub.cleanup, contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
                train_one(sub)
            row = (cat, "ok", time.perf_counter() - t0, os.path.join(sub.out, "model.pt"))
        except KeyboardInterrupt:
            raise
        except (UserError, *EXPECTED_ERRORS) as exc:
            if not together or rank == 0:
                print(f"{cat}: failed: {exc}", file=sys.stderr)
            row = (cat, f"failed: {exc}", time.perf_counter() - t0, "")
        finally:
            if quiet:
                quiet.close()
        if not together or rank == 0:
            rows.append(row)
    rows = sorted((r for part in gather(rows) for r in part), key=lambda r: categories.index(r[0]))
    if rank == 0:
        print(f"{'category':<24} {'result':<10} {'seconds':>8}  checkpoint")
        for cat, result, sec, path in rows:
            print(f"{cat:<24} {result if result == 'ok' else 'FAILED':<10} {sec:8.1f}  {path or result}")
    failed = [r[0] for r in rows if r[1] != "ok"]
    if failed:
        raise UserError(f"{len(failed)} of {len(rows)} categories failed: {', '.join(failed)}")


def check_inputs(args, files, what: str) -> None:
    """Under torchrun (``args.ranks``): stop every rank with one line when there are more
    processes than ``files`` or the ranks list different files (a checksum of the list)."""
    import hashlib

    rank, size = getattr(args, "ranks", (0, 1))
    if size == 1:
        return
    files = [os.fspath(f) for f in files]
    digests = distributed.gather(hashlib.sha256(repr(files).encode()).hexdigest())
    if len(set(digests)) > 1:
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        raise UserError(f"the ranks see different {what} (rank 0 and rank(s) {odd} list other files): every process "
                        "must read the same data")
    if size > len(files):
        raise UserError(f"{size} processes for {len(files)} {what}: start at most {len(files)} (--nproc-per-node)")
