"""`livesight train toy`: train toy-vlm on the synthetic world, in runs that resume from a checkpoint.

Each step draws a batch of samples (batches.py says what a sample holds) from the training worlds
(seeds TRAIN_SEED_BASE and up; evaluation sets use seeds below it), lays each out as the engine would
(layouts.py), runs the tower on every chunk's frames and the language model over the sequences, and
minimizes, with AdamW:
- the cross-entropy of the narrations and answers (answers weighted up);
- a linear read-out of each chunk's tower tokens predicting what it shows (batches.labels), training
  only, and a bound on the tokens' scale: without them the tower's tokens grew a thousandfold and all
  looked alike to the language model;
- a retrieval loss: for a question about a past second, the engine scores every offloaded block by
  its mean key against the question's mean query (kernels/retrieval.py); the block of that second
  must score highest among the sample's blocks, in every layer.
The data of step s comes from (seed, s) alone, so a resumed run sees what an unbroken one would.
"""

import hashlib
import json
import math
import os
import time
from dataclasses import asdict

import numpy as np
import torch

from livesight.errors import InputError
from livesight.eval.output import writable_folder
from livesight.streaming.config import SessionConfig
from livesight.train.batches import LABELS, Batch, BatchStream
from livesight.train.config import TRAIN_SEED_BASE, TrainConfig
from livesight.train.frames import render_bank
from livesight.train.toy_model import (GRID, MAX_PIXELS, SOURCE_SIZE, TEMPORAL_STRIDE, embed_with_vision, load_saved,
                                       new_model, save, toy_tokenizer, vision_tokens)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then a cosine down to a tenth."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.model = (new_model(cfg.seed) if cfg.init is None else load_saved(cfg.init, cfg.seed)).to(cfg.device)
        self.log_tau = torch.zeros((), device=cfg.device, requires_grad=True)  # the retrieval loss's temperature
        # training only (not saved with the model): one linear read-out per label of each chunk's tokens, which
        # teaches the tower what the world shows from the first step on
        grid_tokens, hidden = math.prod(GRID), self.model.config.text_config.hidden_size
        self.probes = torch.nn.ModuleList([torch.nn.Linear(grid_tokens * hidden, n) for n in LABELS]).to(cfg.device)
        self.opt = torch.optim.AdamW([*self.model.parameters(), *self.probes.parameters(), self.log_tau], lr=cfg.lr,
                                     betas=(0.9, 0.95), weight_decay=0.01)
        self.step, self.history = 0, []
        if os.path.exists(cfg.checkpoint):
            state = _checkpoint(cfg.checkpoint, cfg.device)
            if state["config"] != asdict(cfg) | {"minutes": state["config"]["minutes"]}:
                raise InputError(f"--checkpoint {cfg.checkpoint} was made with other settings: remove it, give "
                                 f"another path, or run with those")
            self.model.load_state_dict(state["model"])
            self.probes.load_state_dict(state["probes"])
            self.opt.load_state_dict(state["optimizer"])
            with torch.no_grad():
                self.log_tau.copy_(state["log_tau"])
            self.step, self.history = state["step"], state["history"]
        text = self.model.config.text_config
        self.heads, self.kv_heads = text.num_attention_heads, text.num_key_value_heads
        self.head_dim = text.hidden_size // text.num_attention_heads
        self.captured: dict[str, list[torch.Tensor]] = {"q": [], "k": []}
        for layer in self.model.model.language_model.layers:
            layer.self_attn.q_proj.register_forward_hook(lambda m, i, o: self.captured["q"].append(o))
            layer.self_attn.k_proj.register_forward_hook(lambda m, i, o: self.captured["k"].append(o))

    def save_checkpoint(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.cfg.checkpoint)), exist_ok=True)
        staging = self.cfg.checkpoint + ".part"
        torch.save({"model": self.model.state_dict(), "probes": self.probes.state_dict(),
                    "optimizer": self.opt.state_dict(), "log_tau": self.log_tau,
                    "step": self.step, "history": self.history, "config": asdict(self.cfg)}, staging)
        os.replace(staging, self.cfg.checkpoint)

    def forward(self, batch: Batch, frames) -> dict[str, torch.Tensor]:
        """-> losses and metrics of one batch."""
        model, device = self.model, self.cfg.device
        self.captured = {"q": [], "k": []}
        visual = vision_tokens(model, frames)  # (chunks * tokens, hidden)
        seen = visual.float().view(len(batch.labels), -1)  # (chunks, tokens * hidden)
        targets = batch.labels.to(device)
        label_loss = sum(torch.nn.functional.cross_entropy(head(seen), targets[:, i], ignore_index=-100)
                         for i, head in enumerate(self.probes)) / len(self.probes)
        # the tower's tokens stay near the scale of the text embeddings (unbounded, they grew 1000-fold and
        # every chunk looked the same to the language model)
        scale = visual.float().pow(2).mean(-1).sqrt()
        scale_loss = torch.nn.functional.relu(scale - 1.0).pow(2).mean()
        ids = batch.ids.to(device)
        embeds = embed_with_vision(model, ids, visual)
        # padding is at the end of each row, so the causal mask alone keeps it from every real token
        hidden = model.model.language_model(inputs_embeds=embeds, position_ids=batch.pos.to(device)).last_hidden_state
        weight = batch.weight.to(device)[:, 1:]
        where = weight > 0
        logits = model.lm_head(hidden[:, :-1][where]).float()
        targets = ids[:, 1:][where]
        losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        text_loss = (losses * weight[where]).sum() / weight[where].sum()
        answers = batch.answer_at.to(device)  # (B,) the first answer's first token, -1: none
        asked = answers >= 0
        first_right = torch.zeros(())
        if bool(asked.any()):
            at = answers[asked]
            predicted = model.lm_head(hidden[asked.nonzero().squeeze(1), at - 1]).argmax(-1)
            first_right = (predicted == ids[asked.nonzero().squeeze(1), at]).float().mean()
        retrieval, top1 = self.retrieval_loss(batch)
        return {"loss": text_loss + self.cfg.retrieval_weight * retrieval + label_loss + scale_loss, "text": text_loss,
                "retrieval": retrieval, "labels": label_loss, "vision_rms": scale.mean(), "answer_acc": first_right,
                "retrieval_top1": top1}

    def retrieval_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the engine's block scores (mean query . mean key, per layer) against the
        block of the second asked about; -> (loss, share of layers x questions where it ranks first)."""
        asked = [b for b, t in enumerate(batch.targets) if t is not None and len(batch.spans[b]) > 1]
        if not asked:
            zero = torch.zeros((), device=self.cfg.device)
            return zero, zero
        device, width = self.cfg.device, self.kv_heads * self.head_dim
        n_blocks = max(len(batch.spans[b]) for b in asked)
        # every token of a block or a probe gets a row of a (questions * (blocks + 1)) table: block j of
        # question i is row i * (n_blocks + 1) + j, its probe the last row of i's
        rows, tokens = [], []
        for i, b in enumerate(asked):
            for j, (a, e) in enumerate(batch.spans[b] + [batch.probes[b]]):
                slot = n_blocks if j == len(batch.spans[b]) else j
                tokens.append(torch.arange(a, e) + b * batch.ids.shape[1])
                rows.append(torch.full((e - a,), i * (n_blocks + 1) + slot))
        tokens, rows = torch.cat(tokens).to(device), torch.cat(rows).to(device)
        count = torch.zeros(len(asked) * (n_blocks + 1), device=device).index_add_(0, rows, torch.ones_like(
            rows, dtype=torch.float32)).clamp(min=1)
        q = torch.stack(self.captured["q"]).flatten(1, 2)[:, tokens].float()  # (layers, tokens, Hq * D)
        k = torch.stack(self.captured["k"]).flatten(1, 2)[:, tokens].float()  # (layers, tokens, Hkv * D)
        group = self.heads // self.kv_heads
        q = q.view(*q.shape[:2], self.kv_heads, group, self.head_dim).sum(3).flatten(2)  # heads of a group summed
        means = torch.zeros(q.shape[0], count.numel(), width, device=device)
        q_means = means.index_add(1, rows, q) / (count[:, None] * group * self.kv_heads)
        k_means = means.index_add(1, rows, k) / count[:, None]
        q_means = q_means.view(q.shape[0], len(asked), n_blocks + 1, width)[:, :, -1]  # (layers, questions, W)
        k_means = k_means.view(q.shape[0], len(asked), n_blocks + 1, width)[:, :, :-1]  # (layers, questions, blocks, W)
        scores = torch.einsum("lqbw,lqw->lqb", k_means, q_means) * self.log_tau.exp()
        sizes = torch.tensor([len(batch.spans[b]) for b in asked], device=device)
        scores = scores.masked_fill(torch.arange(n_blocks, device=device) >= sizes[:, None], float("-inf"))
        target = torch.tensor([batch.targets[b] for b in asked], device=device).expand(q.shape[0], -1)
        loss = torch.nn.functional.cross_entropy(scores.flatten(0, 1), target.flatten())
        return loss, (scores.argmax(-1) == target).float().mean()

    def train(self, stream: BatchStream, bank) -> bool:
        """Run until the last step or the time budget; -> whether training is finished."""
        cfg, start = self.cfg, time.perf_counter()
        amp = torch.autocast("cuda", torch.bfloat16) if cfg.device.startswith("cuda") else torch.autocast(
            "cpu", enabled=False)
        running: dict[str, list[float]] = {}
        for batch in stream.batches(self.step):
            for group in self.opt.param_groups:
                group["lr"] = lr_at(cfg, self.step)
            with amp:
                out = self.forward(batch, bank.chunk_frames(batch.chunks.to(bank.frames.device)))
            self.opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.step += 1
            for key, value in out.items():
                running.setdefault(key, []).append(float(value.detach()))
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                row = {"step": self.step, "lr": round(lr_at(cfg, self.step - 1), 6),
                       **{k: round(float(np.mean(v)), 4) for k, v in running.items()},
                       "minutes": round((time.perf_counter() - start) / 60, 2)}
                self.history.append(row)
                print(json.dumps(row), flush=True)
                running = {}
            done = self.step >= cfg.steps
            out_of_time = time.perf_counter() - start > cfg.minutes * 60
            if done or out_of_time or self.step % cfg.save_every == 0:
                self.save_checkpoint()
            if done or out_of_time:
                return done
        return True

    def finish(self, command: str) -> dict:
        """Save the weights and the record of how they were made -> the record."""
        save(self.model, self.cfg.out)
        with open(os.path.join(self.cfg.out, "model.safetensors"), "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        record = {"command": command, "config": asdict(self.cfg) | {"out": None, "checkpoint": None},
                  "train_seeds": [TRAIN_SEED_BASE, TRAIN_SEED_BASE + self.cfg.worlds - 1],
                  "steps_done": self.step, "sha256": digest,
                  "parameters": sum(p.numel() for p in self.model.parameters()),
                  "history": self.history}
        with open(os.path.join(self.cfg.out, "training.json"), "w") as f:
            json.dump(record, f, indent=1)
        return record


def run(cfg: TrainConfig, command: str) -> int:
    """One run: render the worlds, resume, train until done or out of time, save the weights reached.
    -> 0 when finished, 3 when the next run must resume."""
    trainer = Trainer(cfg)
    finished = trainer.step >= cfg.steps
    if not finished:
        t0 = time.perf_counter()
        seeds = list(range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + cfg.worlds))
        bank = render_bank(seeds, cfg.seconds, cfg.device, MAX_PIXELS, SOURCE_SIZE, workers=max(cfg.workers, 1))
        print(f"rendered {len(seeds)} worlds x {cfg.seconds} s in {time.perf_counter() - t0:.1f} s", flush=True)
        stream = BatchStream(toy_tokenizer(), seeds, bank.changed, SessionConfig(), cfg.seed, cfg.batch,
                             cfg.steps, cfg.workers, GRID, TEMPORAL_STRIDE, cfg.questions, cfg.choice_reply,
                             cfg.raw_share)
        finished = trainer.train(stream, bank)
    record = trainer.finish(command)
    print(f"wrote {cfg.out} at step {trainer.step} of {cfg.steps} (model.safetensors sha256 {record['sha256'][:16]}…)")
    if not finished:
        print(f"stopped after {cfg.minutes:g} minutes; run the same command again to resume from {cfg.checkpoint}")
        return 3
    return 0


def _checkpoint(path: str, device: str) -> dict:
    """A checkpoint this command wrote (tensors and plain values only: nothing in it runs), else InputError."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - unreadable, not a torch file, or holding other objects
        raise InputError(f"--checkpoint {path} is not a checkpoint of `livesight train toy` ({type(err).__name__}): "
                         f"remove it or give another path") from None
    if not isinstance(state, dict) or not {"model", "probes", "optimizer", "log_tau", "step", "history",
                                           "config"} <= set(state):
        raise InputError(f"--checkpoint {path} is not a checkpoint of `livesight train toy`: remove it or give "
                         f"another path")
    return state


def main(args) -> int:
    """The command: every path checked before any work (a run must not train for minutes, then fail to save)."""
    import shlex
    import sys
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        cfg = TrainConfig(args.out, args.checkpoint, args.seed, args.steps, args.batch, args.lr, args.warmup,
                          args.minutes, args.worlds, args.seconds, device=device, workers=args.workers,
                          questions=args.questions, init=args.init, choice_reply=args.choice_reply,
                          raw_share=args.raw_share)
    except ValueError as err:
        raise InputError(str(err)) from None
    if cfg.init is not None and not os.path.isfile(os.path.join(cfg.init, "config.json")):
        raise InputError(f"--init {cfg.init} is not a saved model's folder (config.json, model.safetensors): give "
                         f"an earlier stage's --out")
    writable_folder(cfg.out, "--out")
    writable_folder(os.path.dirname(os.path.abspath(cfg.checkpoint)), "--checkpoint's folder")
    return run(cfg, "livesight " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
