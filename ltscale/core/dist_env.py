"""This process's place in a distributed job, read from the launcher's environment.

Sources, first match wins:

* **torchrun** (``torch.distributed.run``): ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``.
* **SLURM** (``srun`` with one task per process): ``SLURM_PROCID`` (rank), ``SLURM_LOCALID``
  (local rank), ``SLURM_NTASKS`` (world size); the master is the first host of
  ``SLURM_JOB_NODELIST`` (``node[01-03,07]`` → ``node01``) unless ``MASTER_ADDR`` is set, the
  port is ``MASTER_PORT`` or, when absent, ``20000 + SLURM_JOB_ID mod 20000`` — the same on every
  task of the job and unlikely to collide with another job on the same master node.
* otherwise one process: rank 0 of 1, master ``127.0.0.1:29500``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

DEFAULT_ADDR = "127.0.0.1"
DEFAULT_PORT = 29500
SLURM_PORT_BASE, SLURM_PORT_SPAN = 20000, 20000


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in node list {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise ValueError(f"unbalanced '[' in node list {text!r}")
    parts.append("".join(cur))
    return [p for p in (s.strip() for s in parts) if p]


def _expand_range(spec: str) -> list[str]:
    """``01-03,07`` → ``['01', '02', '03', '07']`` (zero padding kept)."""
    out = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        lo, dash, hi = item.partition("-")
        if not dash:
            out.append(lo)
            continue
        if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
            raise ValueError(f"bad range {item!r} in node list")
        width = len(lo)
        out.extend(str(i).zfill(width) for i in range(int(lo), int(hi) + 1))
    return out


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list expanded, in order: ``node[01-03,07],gpu5`` →
    ``[node01, node02, node03, node07, gpu5]``; several bracket groups in one name expand as a
    product (``r[1-2]n[1-2]`` → ``r1n1, r1n2, r2n1, r2n2``)."""
    hosts: list[str] = []
    for part in _split_top_level(nodelist):
        names = [""]
        for literal, bracket in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", part):
            if not literal and not bracket:
                continue
            choices = _expand_range(bracket) if bracket else [""]
            names = [n + literal + c for n in names for c in choices]
        hosts.extend(names)
    return hosts


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = DEFAULT_ADDR
    master_port: int = DEFAULT_PORT
    source: str = "single"   # torchrun | slurm | single

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "DistEnv":
        env = os.environ if environ is None else environ
        if "RANK" in env and "WORLD_SIZE" in env:
            return cls(rank=int(env["RANK"]), local_rank=int(env.get("LOCAL_RANK", 0)),
                       world_size=int(env["WORLD_SIZE"]),
                       master_addr=env.get("MASTER_ADDR", DEFAULT_ADDR),
                       master_port=int(env.get("MASTER_PORT", DEFAULT_PORT)),
                       source="torchrun")._checked()
        if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            addr = env.get("MASTER_ADDR")
            if not addr:
                nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
                hosts = expand_nodelist(nodes) if nodes else []
                addr = hosts[0] if hosts else DEFAULT_ADDR
            if env.get("MASTER_PORT"):
                port = int(env["MASTER_PORT"])
            elif env.get("SLURM_JOB_ID", "").isdigit():
                port = SLURM_PORT_BASE + int(env["SLURM_JOB_ID"]) % SLURM_PORT_SPAN
            else:
                port = DEFAULT_PORT
            return cls(rank=int(env["SLURM_PROCID"]), local_rank=int(env.get("SLURM_LOCALID", 0)),
                       world_size=int(env["SLURM_NTASKS"]), master_addr=addr, master_port=port,
                       source="slurm")._checked()
        return cls(master_addr=env.get("MASTER_ADDR", DEFAULT_ADDR),
                   master_port=int(env.get("MASTER_PORT", DEFAULT_PORT)))

    def _checked(self) -> "DistEnv":
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(f"{self.source}: rank {self.rank} / local rank {self.local_rank} "
                             f"do not fit world size {self.world_size}")
        return self

    def export(self, environ: dict | None = None) -> None:
        """Set the variables ``init_process_group(init_method="env://")`` reads (needed when the
        job came from SLURM rather than torchrun)."""
        env = os.environ if environ is None else environ
        env["MASTER_ADDR"] = self.master_addr
        env["MASTER_PORT"] = str(self.master_port)
        env["RANK"] = str(self.rank)
        env["WORLD_SIZE"] = str(self.world_size)
        env["LOCAL_RANK"] = str(self.local_rank)
