"""CLIP (Radford et al., ICML 2021) as open_clip trains it: the baseline every method is compared with.

Per step (as open_clip_train/train.py trains it): one full-image vision pass, one text pass, the symmetric InfoNCE loss with a
learnable temperature (open_clip ``ClipLoss``, local loss with gathered features); the logit scale is clamped
to ln 100 after every optimizer step (the base class does it).
"""
from benchmark.method import Method


class CLIP(Method):
    paper = "CLIP: Radford et al., ICML 2021 (open_clip training semantics)"
    summary = "Contrastive image-text pretraining on the full image; the unmasked baseline."

    def training_step(self, batch, progress):
        image = self.clip.encode_image(batch["images"])            # CLS -> ln_post -> proj
        text = self.clip.encode_text(batch["texts"])               # EOT token -> text_projection
        loss = self.contrastive(image, text)                       # symmetric InfoNCE (CLIP §2.3)
        self.record(mask_ratio=0.0, logit_scale=self.clip.logit_scale.exp().item())
        return {"loss": loss, "contrastive": loss.detach()}
