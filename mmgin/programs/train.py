"""The Train program: MMAudio flow-matching training, configured entirely by gin.

    torchrun --standalone --nproc_per_node=8 launch.py --gin_file=gin/large_44k.gin \\
        --gin_param="VIDEO_STORES = ['/data/vgg-train']" ...

What a run writes under its output directory:

    config.gin, operative_config.gin   what was parsed / what was used
    checkpoints/ckpt_<it>.pth           the last two training checkpoints (exact resume)
    ema_ckpts/<profile>.<step>.pt       post-hoc EMA snapshots (+ profiles.json)
    ema_final.pth                       the EMA at final_ema_sigma_rel, in the released file's exact
                                        layout (keys, order, shapes, dtypes of mmaudio_*.pth)
    samples/<it>/<id>.flac              generated validation audio (+ metrics.json with a hook);
                                        a repeated id's later items are <id>-1.flac, <id>-2.flac ...
    tensorboard/                        event files, tags below

TensorBoard tags (rank 0; scalars unless noted):

    train/loss               mean flow-matching loss over the log window, all ranks
    train/lr                 learning rate of the last step
    train/grad_norm          mean pre-clip gradient norm of the window's applied updates
    train/loss_by_t          histogram: mean loss per t bin (25 bins over [0, 1])
    train/samples_per_s      global samples per second (training time only)
    train/step_time          seconds per optimizer step
    train/data_wait_fraction share of the step time spent waiting for the loader
    train/gpu_memory_gib     peak CUDA memory allocated in the window (CUDA only)
    train/mfu                model FLOPs utilisation (needs a known GPU or Train.peak_tflops)
    train/skipped_updates    total updates skipped for non-finite loss or gradients
    val/loss, val/loss_by_t  validation loss (same noise every pass) and its t histogram
    sample/<k>/audio, sample/<k>/mel           generated audio of validation item k, its mel image
    sample/<k>/audio_gt, sample/<k>/mel_gt     the item's ground truth (decoded VAE mean)
    time/<phase>_s           seconds of a phase outside the training step, at the iteration it ran:
                             ema_snapshot, validation (the first includes compiling it), sampling,
                             checkpoint; none of them counts in train/samples_per_s
    config                   text: the operative gin config
    data/mixture             text: the training mixture (rows, rates, shares per store)
    <hook tag>/<metric>      evaluation metrics written by the evaluation hook (e.g. val/FD-VGG)
"""

from __future__ import annotations

import os
import random
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import gin
import numpy as np
import torch
from absl import logging
from torch.utils.data import Dataset

from mmgin import dist, io, preemption
from mmgin.audio import AudioCodec
from mmgin.data import null_text
from mmgin.data.loader import DistributedBatchLoader
from mmgin.media.write import write_audio
from mmgin.model import FlowMatching, MMAudio
from mmgin.model.flops import training_flops_per_sample
from mmgin.programs.base import Program
from mmgin.train import checkpoint as ckpt
from mmgin.train import ema as ema_lib
from mmgin.train import reference_run
from mmgin.train.batches import MicroBatchSource, accumulation_steps, to_device
from mmgin.train.metrics import PhaseTimes, Throughput, Writer, format_duration, peak_flops
from mmgin.train.optim import WarmupStepSchedule, adamw
from mmgin.train.spectrogram import spectrogram_image
from mmgin.train.trainer import NonFiniteError, Trainer
from mmgin.train.validation import generate, shard_indices, validation_loss

EMA_DIR = "ema_ckpts"
FINAL_EMA = "ema_final.pth"
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tensorboard"


@gin.configurable
class Train(Program):
    """Trains `network` on `train_dataset` with the paper's recipe by default.

    `network` is bound as a factory (`Train.network = @get_network`) so that it is built after
    seeding, identically on every rank and in every run.
    `batch_size` is the GLOBAL batch; `micro_batch_size` (per GPU) with gradient accumulation
    keeps it on fewer or smaller GPUs. A run restarted in the same output_dir resumes from its
    newest usable checkpoint, and stops with an error rather than start over on checkpoints it
    cannot use (mmgin/train/README.md, "Checkpoints and resume"); `checkpoint=` resumes from a
    given file unless the output_dir's own run is past it; `weights=` starts
    from the network of any weights file or training checkpoint (released mmaudio_*.pth for
    fine-tuning, the reference's files too); `continue_reference_run=` continues a run of the
    reference trainer from its <exp>_ckpt_last.pth (mmgin.train.reference_run says what carries over).
    SIGTERM (SLURM, Kubernetes, torchrun) stops every rank at a step boundary with a checkpoint
    and exit code 0; a second SIGTERM, or none of that within `sigterm_grace_seconds`, ends the
    run at once (mmgin.preemption).
    """

    def __init__(
        self,
        output_dir: str | Path = gin.REQUIRED,
        network: Callable[[], MMAudio] | MMAudio = gin.REQUIRED,
        train_dataset: Dataset = gin.REQUIRED,
        val_dataset: Dataset | None = None,
        codec: AudioCodec | None = None,
        flow: FlowMatching | None = None,
        batch_size: int = 512,
        micro_batch_size: int | None = None,
        num_iterations: int = 300_000,
        optimizer: Callable[..., torch.optim.Optimizer] = adamw,
        lr_schedule: Callable[[int], float] | None = None,
        clip_grad_norm: float | None = 1.0,
        precision: str = "bf16",
        grad_scaler: bool = False,
        compile: bool = True,
        tf32: bool = True,
        deterministic: bool = False,
        num_threads: int | None = None,
        null_condition_probability: float = 0.1,
        independent_video_dropout: bool = False,
        seed: int = 14159265,
        num_workers: int = 10,
        ema: bool = True,
        ema_sigma_rels: Sequence[float] = (0.05, 0.1),
        ema_snapshot_every: int = 5000,
        ema_update_every: int = 1,
        final_ema_sigma_rel: float | None = 0.05,
        checkpoint_every: int = 10_000,
        keep_checkpoints: int = 2,
        checkpoint: str | Path | None = None,
        weights: str | Path | None = None,
        continue_reference_run: str | Path | None = None,
        log_every: int = 200,
        val_every: int = 5000,
        val_batch_size: int | None = None,
        sample_every: int = 20_000,
        num_samples: int | None = None,
        sample_batch_size: int = 16,
        cfg_strength: float = 4.5,
        tensorboard_samples: int = 4,
        eval_hook: Callable[..., dict[str, float]] | None = None,
        max_consecutive_skips: int = 10,
        peak_tflops: float | None = None,
        sigterm_grace_seconds: float = preemption.DEFAULT_GRACE_SECONDS,
    ):
        super().__init__(output_dir)
        info = dist.info()
        self.micro_batch_size, self.accumulation = accumulation_steps(batch_size, micro_batch_size, info.world_size)
        for name, value in (("num_iterations", num_iterations), ("log_every", log_every),
                            ("checkpoint_every", checkpoint_every), ("val_every", val_every),
                            ("sample_every", sample_every)):
            if value < 1:
                raise ValueError(f"Train.{name} must be >= 1, got {value}")
        if val_dataset is None:
            dist.log_main("Train.val_dataset is None: no validation loss or samples")
        elif codec is None:
            dist.log_main("Train.codec is None: validation samples are not generated")
        # Every rank builds the same initial weights (the reference seeds before building).
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        self.network = network if isinstance(network, torch.nn.Module) else network()
        expected = (self.network.latent_seq_len, self.network.latent_dim)
        for role, dataset in (("train_dataset", train_dataset), ("val_dataset", val_dataset)):
            shape = tuple(getattr(dataset, "latent_shape", expected))
            if dataset is not None and shape != expected:
                raise ValueError(
                    f"Train.{role} has latents of shape {shape} but the network expects {expected} "
                    "(latent length, channels): the stores were extracted for another audio mode "
                    "or duration than the network's"
                )
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.codec = codec
        self.flow = flow if flow is not None else FlowMatching()
        self.batch_size = batch_size
        self.num_iterations = num_iterations
        self.make_optimizer = optimizer
        self.lr_schedule = lr_schedule if lr_schedule is not None else WarmupStepSchedule()
        self.clip_grad_norm = clip_grad_norm
        self.precision = precision
        self.grad_scaler = grad_scaler
        self.compile = compile
        self.tf32 = tf32
        self.deterministic = deterministic
        self.num_threads = num_threads
        self.null_condition_probability = null_condition_probability
        self.independent_video_dropout = independent_video_dropout
        self.seed = seed
        self.num_workers = num_workers
        self.use_ema = ema
        self.ema_sigma_rels = tuple(ema_sigma_rels)
        self.ema_snapshot_every = ema_snapshot_every
        self.ema_update_every = ema_update_every
        self.final_ema_sigma_rel = final_ema_sigma_rel
        self.checkpoint_every = checkpoint_every
        self.keep_checkpoints = keep_checkpoints
        self.checkpoint = checkpoint
        self.weights = weights
        self.continue_reference_run = continue_reference_run
        chosen = [n for n, v in (("checkpoint", checkpoint), ("weights", weights),
                                 ("continue_reference_run", continue_reference_run)) if v is not None]
        if len(chosen) > 1:
            raise ValueError(f"set one of Train.{', Train.'.join(chosen)}: each says where the run starts")
        self.log_every = log_every
        self.val_every = val_every
        self.val_batch_size = val_batch_size or self.micro_batch_size
        self.sample_every = sample_every
        self.num_samples = num_samples
        self.sample_batch_size = sample_batch_size
        self.cfg_strength = cfg_strength
        self.tensorboard_samples = tensorboard_samples
        self.eval_hook = eval_hook
        self.max_consecutive_skips = max_consecutive_skips
        self.peak_tflops = peak_tflops
        self.sigterm_grace_seconds = sigterm_grace_seconds
        self.device = info.device

    # ------------------------------------------------------------------ setup
    def _configure_torch(self) -> Callable[[], None]:
        """Applies the run's torch settings; returns what puts the previous ones back."""
        previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        if self.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32
            torch.backends.cudnn.benchmark = not self.deterministic

        def restore() -> None:
            torch.set_num_threads(previous[0])
            torch.use_deterministic_algorithms(previous[1])

        return restore

    def _unusable(self, state: dict[str, Any]) -> str | None:
        """Why a checkpoint cannot continue this run exactly (None: it can). Settings it holds
        that a resume applies (learning rate, schedule, betas, eps, weight decay) are no reason."""
        info = dist.info()
        mismatch = self.network.weights_mismatch(state["network"])
        if mismatch is not None:
            return mismatch
        for setting, theirs, ours in (
                ("the number of ranks", state.get("world_size"), info.world_size),
                ("gradient accumulation steps", state.get("accumulation", self.accumulation), self.accumulation),
                ("Train.seed", state.get("seed", self.seed), self.seed)):
            if theirs != ours:
                return (f"{setting} is {theirs} in the checkpoint, {ours} in this run: an exact resume needs "
                        "the same (to change it, start a new run with Train.weights=<checkpoint>)")
        ema = state.get("ema")
        if self.use_ema and ema is None:
            return "it holds no EMA, and this run keeps one (Train.ema = True)"
        if self.use_ema and [float(x) for x in ema["sigma_rels"]] != [float(x) for x in self.ema_sigma_rels]:
            return (f"Train.ema_sigma_rels is {tuple(ema['sigma_rels'])} in the checkpoint, "
                    f"{self.ema_sigma_rels} in this run: a run's EMA profiles are fixed")
        return None

    def _resume_state(self) -> dict[str, Any] | None:
        """The checkpoint this run continues: the newest usable one of its output directory, or
        Train.checkpoint when that is newer (a re-run command never rewinds the run)."""
        named = ckpt.load_file(self.checkpoint, self._unusable) if self.checkpoint is not None else None
        found = ckpt.load_latest(self.output_dir, self._unusable)
        if named is not None:
            if found is None or named["iteration"] > found[1]["iteration"]:
                self._refuse_over_a_finished_run()
                dist.log_main("resuming from Train.checkpoint=%s", self.checkpoint)
                return named
            dist.log_main("resuming from %s: Train.checkpoint=%s (iteration %d) is not used, the run in "
                          "%s is at or past it", found[0], self.checkpoint, named["iteration"], self.output_dir)
            return found[1]
        if found is None:
            self._refuse_over_a_finished_run()
            return None
        dist.log_main("resuming from %s", found[0])
        for name, value in (("weights", self.weights), ("continue_reference_run", self.continue_reference_run)):
            if value is not None:
                dist.log_main("Train.%s=%s is not used: the run continues from its checkpoint", name, value)
        return found[1]

    def _refuse_over_a_finished_run(self) -> None:
        """A run that does not continue the output directory's own never replaces its ema_final.pth."""
        final = self.output_dir / FINAL_EMA
        if final.exists():
            raise ckpt.CheckpointError(
                f"{final} is the result of a finished run, and {self.output_dir} has no checkpoint this run "
                "continues; to start a new run, set OUTPUT_DIR to a new folder (or move that one away)"
            )

    def _set_latent_statistics(self) -> None:
        network = self.network
        if torch.isfinite(network.latent_mean).all() and torch.isfinite(network.latent_std).all():
            dist.log_main("latent statistics come from the network weights")
            return
        compute = getattr(self.train_dataset, "latent_statistics", None)
        if compute is None:
            raise ValueError(
                "the network has no latent statistics and Train.train_dataset cannot compute them; "
                "use a DatasetMixture, or start from weights that carry them"
            )
        stats = compute() if dist.is_main() else None
        mean, std = dist.broadcast_object(stats)
        with torch.no_grad():
            network.latent_mean.copy_(mean.reshape(network.latent_mean.shape))
            network.latent_std.copy_(std.reshape(network.latent_std.shape))
        dist.log_main("latent statistics from the training data: mean %s, std %s",
                      [round(x, 4) for x in mean.tolist()[:4]], [round(x, 4) for x in std.tolist()[:4]])

    def _null_text_records(self, datasets: Sequence[Dataset]) -> list[tuple[Path, torch.Tensor | None]]:
        """(store, null-text record or None) of each dataset that reads a feature store."""
        text_shape = tuple(self.network.empty_string_feat.shape)
        stores = [d.store.memmap_dir for d in datasets if getattr(d, "store", None) is not None]
        return [(path, null_text.read(path, text_shape)) for path in stores]

    def _set_null_text(self) -> None:
        """A network built from scratch takes its 'no text' feature from the stores' record.

        All training stores must record the same one (and the validation store, if it records
        one). Released weights and checkpoints keep their own: a store recording another one
        is then worth a warning (fine-tuning on features of another text encoder).
        """
        network = self.network
        training = self._null_text_records(getattr(self.train_dataset, "datasets", [self.train_dataset]))
        validation = self._null_text_records([self.val_dataset] if self.val_dataset is not None else [])
        if torch.isfinite(network.empty_string_feat).all():
            own = network.empty_string_feat.detach().cpu()
            differing = [str(p) for p, v in training + validation if v is not None and not torch.equal(v, own)]
            if differing:
                logging.warning("the null text of the network's weights differs from the record of %s: "
                                "their text features may come from another text encoder", ", ".join(differing))
            return
        if not training:
            raise ValueError(
                "the network has no null-text feature and Train.train_dataset reads no feature store "
                "to take it from; train on stores, or start from weights that carry it"
            )
        value = null_text.agreed(training)
        recorded = [(p, v) for p, v in validation if v is not None]
        null_text.agreed(training[:1] + recorded)
        with torch.no_grad():
            network.empty_string_feat.copy_(value)
        dist.log_main("null-text feature from the stores' record (%s)", null_text.FILE_NAME)

    def _build(self, resume: dict[str, Any] | None) -> None:
        info = dist.info()
        reference = None
        if resume is not None:
            self.network.load_weights(resume["network"])
        elif self.weights is not None:
            dist.log_main("initialising the network from Train.weights=%s", self.weights)
            weights = ckpt.network_weights(self.weights)
            try:
                self.network.load_weights(weights)
            except RuntimeError as e:
                raise ckpt.CheckpointError(f"Train.weights={self.weights}: {e}") from None
        elif self.continue_reference_run is not None:
            reference = reference_run.load(self.continue_reference_run)
            reference_run.load_weights(self.network, reference, Path(self.continue_reference_run))
        self._set_latent_statistics()
        self._set_null_text()
        self.network.to(self.device).train()
        if self.codec is not None:
            self.codec.to(self.device)
        virtual_ranks = [info.rank * self.accumulation + j for j in range(self.accumulation)]
        # The run's identity, made at its first start and kept by every resume (a run continuing
        # a reference run is unnamed, as the reference's snapshots are).
        if resume is not None:
            self.run_id = resume.get("run_id")
        elif reference is not None:
            self.run_id = None
        else:
            self.run_id = dist.broadcast_object(uuid.uuid4().hex[:12])
        ema = None
        if self.use_ema and info.is_main:
            ema_lib.set_aside(self.output_dir / EMA_DIR, self.run_id)
            ema = ema_lib.PostHocEMA(
                self.network, self.output_dir / EMA_DIR, self.ema_sigma_rels,
                self.ema_snapshot_every, self.ema_update_every, run_id=self.run_id,
            )
        self.trainer = Trainer(
            self.network, self.flow, self.device, virtual_ranks=virtual_ranks, seed=self.seed,
            precision=self.precision, compile=self.compile, make_optimizer=self.make_optimizer,
            lr_schedule=self.lr_schedule, clip_grad_norm=self.clip_grad_norm,
            grad_scaler=self.grad_scaler, null_condition_probability=self.null_condition_probability,
            independent_video_dropout=self.independent_video_dropout, ema=ema,
        )
        self.source = MicroBatchSource(
            self.train_dataset, self.micro_batch_size, self.accumulation, info.rank,
            info.world_size, self.seed, self.num_workers,
        )
        self.val_loader = None
        if self.val_dataset is not None:
            self.val_loader = DistributedBatchLoader(
                self.val_dataset, batch_size=self.val_batch_size, seed=self.seed, drop_last=False,
                num_workers=min(2, self.num_workers),
            )
        if resume is not None:
            self._restore(resume)
        elif reference is not None:
            reference_run.continue_from(self.trainer, reference, Path(self.continue_reference_run))

    def _restore(self, state: dict[str, Any]) -> None:
        """A checkpoint that `_unusable` accepted into the trainer, loader and generators."""
        info = dist.info()
        self.trainer.load_state_dict(state)
        self.source.load_state_dict(state["loader"][info.rank])
        self.trainer.load_rng_state(state["rng"][info.rank])

    # -------------------------------------------------------------- checkpoints
    def _save_checkpoint(self) -> None:
        info = dist.info()
        per_rank = dist.all_gather_objects(
            {"rng": self.trainer.rng_state(), "loader": self.source.state_dict()}
        )
        if info.is_main:
            state = self.trainer.state_dict()
            state.update(
                rng=[r["rng"] for r in per_rank], loader=[r["loader"] for r in per_rank],
                world_size=info.world_size, accumulation=self.accumulation, seed=self.seed,
                run_id=self.run_id, config=gin.operative_config_str(),
            )
            path = ckpt.save(self.output_dir, self.trainer.iteration, state, self.keep_checkpoints)
            logging.info("saved %s", path)
        dist.barrier()

    # ------------------------------------------------------------------ logging
    def _log_train(self, writer: Writer, throughput: Throughput, flops_per_sample: float | None,
                   peak: float | None) -> None:
        it = self.trainer.iteration
        window = self.trainer.collect_window()
        seconds, data_wait, steps = throughput.window()
        step_time = seconds / max(steps, 1)
        samples_per_s = self.batch_size * steps / seconds if seconds > 0 else 0.0
        scalars = {
            "train/loss": window["loss"],
            "train/lr": self.trainer.learning_rate,
            "train/grad_norm": window["grad_norm"],
            "train/samples_per_s": samples_per_s,
            "train/step_time": step_time,
            "train/data_wait_fraction": data_wait / seconds if seconds > 0 else 0.0,
            "train/skipped_updates": window["skipped_updates"],
        }
        if self.device.type == "cuda":
            scalars["train/gpu_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        if flops_per_sample is not None and peak is not None:
            scalars["train/mfu"] = flops_per_sample * samples_per_s / (peak * dist.world_size())
        writer.scalars(scalars, it)
        writer.loss_by_t("train/loss_by_t", window["loss_by_t_sums"], window["loss_by_t_counts"], it)
        eta = (self.num_iterations - it) * step_time
        mfu = f" | MFU {100 * scalars['train/mfu']:.1f}%" if "train/mfu" in scalars else ""
        dist.log_main(
            "it %d/%d | loss %.5f | lr %.3g | grad_norm %.4f | %.1f samples/s | %.3f s/it | "
            "data %.0f%%%s | skipped %d | ETA %s",
            it, self.num_iterations, window["loss"], scalars["train/lr"], window["grad_norm"],
            samples_per_s, step_time, 100 * scalars["train/data_wait_fraction"], mfu,
            int(window["skipped_updates"]), format_duration(eta),
        )
        if window["max_consecutive_skips"] >= self.max_consecutive_skips:
            raise NonFiniteError(
                f"{int(window['max_consecutive_skips'])} updates in a row were skipped because the "
                f"loss or gradients were not finite (limit Train.max_consecutive_skips="
                f"{self.max_consecutive_skips}); check the data for NaN/inf, or lower the learning "
                "rate (adamw.learning_rate; a resumed run applies it from its checkpoint's iteration) "
                "and run the same command again: it resumes from the newest checkpoint"
            )

    def _validate(self, writer: Writer) -> None:
        generator = self.trainer.eval_generators()[0]
        loss_fn = self.trainer.loss_fn
        mean, sums, counts = validation_loss(
            loss_fn, self.network, self.flow, self.val_loader, generator, self.device,
            self.trainer.autocast, self.null_condition_probability, self.independent_video_dropout,
        )
        it = self.trainer.iteration
        writer.scalars({"val/loss": mean}, it)
        writer.loss_by_t("val/loss_by_t", sums, counts, it)
        dist.log_main("it %d | val/loss %.5f", it, mean)

    def _sample(self, writer: Writer) -> None:
        info = dist.info()
        it = self.trainer.iteration
        audio_dir = self.output_dir / SAMPLES_DIR / f"{it:09d}"
        count = len(self.val_dataset) if self.num_samples is None else min(self.num_samples, len(self.val_dataset))
        # Ids come from user tables: never a path, and a repeated id must not overwrite a file.
        names = io.distinct_file_names(self.val_dataset.store.ids[:count])
        generator = self.trainer.eval_generators()[0]
        self.network.eval()
        for indices in shard_indices(count, info.rank, info.world_size, self.sample_batch_size):
            batch = to_device(self.val_dataset.__getitems__(indices), self.device)
            latents = generate(self.network, self.flow, batch, generator, self.cfg_strength, self.trainer.autocast)
            with torch.no_grad():
                audio = self.codec.decode_latent(latents).float().cpu()
            for index, waveform in zip(indices, audio):
                write_audio(audio_dir / f"{names[index]}.flac", waveform, self.codec.sampling_rate)
            if info.is_main and indices[0] < self.tensorboard_samples:
                self._log_samples(writer, batch, audio, indices, it)
        self.network.train()
        dist.barrier()
        if info.is_main and self.eval_hook is not None:
            self.eval_hook(audio_dir, it, writer.summary_writer)
        dist.barrier()

    @torch.no_grad()
    def _log_samples(self, writer: Writer, batch: dict, audio: torch.Tensor, indices: list[int],
                     it: int) -> None:
        shown = [k for k, index in enumerate(indices) if index < self.tensorboard_samples]
        truth = self.codec.decode_latent(batch["a_mean"][shown]).float().cpu()
        rate = self.codec.sampling_rate
        for k, waveform, reference in zip(shown, audio[shown], truth):
            index = indices[k]
            for suffix, wave in (("", waveform), ("_gt", reference)):
                writer.audio(f"sample/{index}/audio{suffix}", wave, rate, it)
                spectrum = self.codec.mel(wave.to(self.device).unsqueeze(0))[0]
                writer.image(f"sample/{index}/mel{suffix}", spectrogram_image(spectrum), it)

    # --------------------------------------------------------------------- run
    def run(self) -> None:
        restore_torch_settings = self._configure_torch()
        try:
            with preemption.sigterm_stops(self.sigterm_grace_seconds) as stop:
                self._train(stop)
        finally:
            restore_torch_settings()

    def _train(self, stop: preemption.StopRequest) -> None:
        resume = self._resume_state()
        self._build(resume)
        self.record_config()
        trainer = self.trainer
        writer = Writer(self.output_dir / TENSORBOARD_DIR)
        writer.text("config", "```\n" + gin.operative_config_str() + "\n```")
        describe = getattr(self.train_dataset, "describe", None)
        if describe is not None:  # what the run trains on: rows, rates and shares per store
            mixture = describe()
            dist.log_main("%s", mixture)
            writer.text("data/mixture", "```\n" + mixture + "\n```")
        flops = training_flops_per_sample(self.network) if dist.is_main() else None
        peak = peak_flops(self.device, self.precision, self.peak_tflops)
        dist.log_main(
            "training %s: %d iterations, global batch %d = %d ranks x %d micro-steps x %d, %d steps/epoch",
            type(self.network).__name__, self.num_iterations, self.batch_size, dist.world_size(),
            self.accumulation, self.micro_batch_size, self.source.steps_per_epoch(),
        )
        throughput = Throughput()
        first_validation = True
        vote = preemption.StepVote(stop, self.device)
        try:
            while trainer.iteration < self.num_iterations:
                micro_batches = self.source.next_step()
                throughput.waited(self.source.wait_seconds)
                trainer.train_step(micro_batches)
                throughput.step_done()
                it = trainer.iteration
                extra_start = time.perf_counter()
                if it % self.log_every == 0 or it == self.num_iterations:
                    self._log_train(writer, throughput, flops, peak)
                phases = PhaseTimes()
                if trainer.ema is not None and trainer.ema.snapshot_due():
                    phases.run("ema_snapshot", trainer.ema.write_snapshots)
                if self.val_loader is not None and (it % self.val_every == 0 or it == self.num_iterations):
                    phases.run("validation", lambda: self._validate(writer))
                    if first_validation:  # compiled on first use: paid once per run
                        dist.log_main("the first validation pass took %.1f s, compiling it included",
                                      phases.seconds["validation"])
                        first_validation = False
                if (self.val_dataset is not None and self.codec is not None
                        and (it % self.sample_every == 0 or it == self.num_iterations)):
                    phases.run("sampling", lambda: self._sample(writer))
                saved = it % self.checkpoint_every == 0 or it == self.num_iterations
                if saved:
                    phases.run("checkpoint", self._save_checkpoint)
                writer.scalars(phases.scalars(), it)
                throughput.exclude(time.perf_counter() - extra_start)
                if vote.stop_agreed() and it < self.num_iterations:
                    self._stop_after_sigterm(saved)
                    return
        finally:
            writer.close()
        self._finish()

    def _stop_after_sigterm(self, saved: bool) -> None:
        """Every rank agreed to stop: checkpoint this iteration (EMA state included) unless that
        was just done, and say how to go on."""
        if not saved:
            self._save_checkpoint()
        logging.warning("rank %d: stopped by SIGTERM at iteration %d; %s", dist.rank(),
                        self.trainer.iteration, preemption.RESUME)

    def _finish(self) -> None:
        ema = self.trainer.ema
        if ema is not None:
            if ema.step % ema.snapshot_every:
                ema.write_snapshots()
            if self.final_ema_sigma_rel is not None:
                snapshots = ema_lib.find_snapshots(self.output_dir / EMA_DIR)
                weights = ema_lib.synthesize(snapshots, self.final_ema_sigma_rel, ema.step)
                io.save_torch(self.network.released_state_dict(weights), self.output_dir / FINAL_EMA)
                logging.info("wrote %s (EMA sigma_rel %s at step %d)", self.output_dir / FINAL_EMA,
                             self.final_ema_sigma_rel, ema.step)
        dist.barrier()
