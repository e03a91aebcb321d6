"""FLIP: Scaling Language-Image Pre-training via Masking (Li, Fan, Hu, Feichtenhofer, He; CVPR 2023).

§3 of the paper: drop a random subset of image patches (50 % by default) before the encoder and apply the ViT
to the visible patches only, as MAE does; the loss is CLIP's, with no reconstruction. CLS is always kept and
the drop happens after the positional embedding (open_clip's PatchDropout order, open_clip/transformer.py), but the
kept indices come from ``random_keep_indices`` so the seed fixes them and the realised ratio is logged.
Inference always sees the full image. Optional unmasked tuning (FLIP §3, Table 1e; App. A.1): the last
``unmasked_tune_fraction`` of the steps train with mask 0 as a separate short stage, its learning rate restarting
from its own warm-up at ``unmasked_tune_lr_scale`` of the base (4e-8 against 4e-6 per 256) with a fresh optimizer.
"""
from benchmark.blocks import pool_project, random_keep_indices, vit_tokens
from benchmark.method import Method


class FLIP(Method):
    paper = "FLIP: Li, Fan, Hu, Feichtenhofer, He, CVPR 2023 (arXiv 2212.00794)"
    summary = "CLIP on a random 50% of the image patches: masked tokens are dropped, not encoded."

    def masking(self, progress: float) -> bool:
        return progress < 1.0 - self.cfg["unmasked_tune_fraction"]

    def phases(self):
        # Matched compute counts the masked steps and the unmasked-tuning steps at their own cost.
        u = self.cfg["unmasked_tune_fraction"]
        return [(1.0 - u, 0.0)] + ([(u, 1.0 - u / 2)] if u > 0 else [])

    def lr_stages(self):
        # App. A.1: unmasked tuning = its own run: lr 4e-8 x batch/256 (1/100 of pre-training), 25.6M of 128M
        # samples of warm-up, cosine; here the last `unmasked_tune_fraction` of the steps.
        u = self.cfg["unmasked_tune_fraction"]
        tune = (u, self.cfg["unmasked_tune_lr_scale"], self.cfg["unmasked_tune_warmup_fraction"])
        return [(1.0 - u, 1.0, None)] + ([tune] if u > 0 else [])

    def training_step(self, batch, progress):
        images = batch["images"]
        ratio = self.cfg["mask_ratio"] if self.masking(progress) else 0.0
        keep = random_keep_indices(images.shape[0], self.n_patches, ratio, images.device) if ratio > 0 else None
        image = pool_project(self.visual, vit_tokens(self.visual, images, keep))   # encoder sees visible tokens only
        text = self.clip.encode_text(batch["texts"])
        loss = self.contrastive(image, text)
        kept = keep.shape[1] if keep is not None else self.n_patches
        self.record(mask_ratio=1.0 - kept / self.n_patches, logit_scale=self.clip.logit_scale.exp().item())
        return {"loss": loss, "contrastive": loss.detach()}
