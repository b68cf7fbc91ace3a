"""The validation prompt set: does the model under training draw what its prompts ask for?

At `validation_prompt_every` steps (and at the last) the model makes one image per line of the
`validation_prompts` file (Kohya's prompt-line options as in sample files; the seed of a line is fixed,
its line number unless `--d` says otherwise), with the model's own sampler and CFG as the sample grids
(`sampling.sample_images`), in eval mode and inside `torch.random.fork_rng`, so the training generators and
a resumed run stay bit for bit. The images are scored as `facesmith evaluate` scores them: each prompt's
expectations (`evaluate.faithfulness.expectations`: its phrase rules, with negation and numeric ages)
against the attribute classifier's verdicts (`attributes.classifier.AttributeClassifier`, the shipped one
unless `attribute_classifier` names another), per attribute with `evaluate.faithfulness.faithfulness`.
`val_faithfulness` is the share of all (image, attribute) checks the images pass. The face detector's rate
is left to `facesmith evaluate`: MTCNN on every validation would cost more than the images do.

The figures go to the progress callback, a plain line, TensorBoard (`val_faithfulness`) and
`validation.json` beside the validation loss (`faithfulness`: step -> share, `faithfulness_detail`: step ->
the per-attribute table); a resumed run keeps the entries up to its checkpoint. The loss is validation.py's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from facesmith.errors import FacesmithError
from facesmith.train.validation import read_validation, update_validation_json


def overall_share(table: dict[str, dict]) -> float:
    """The share of all checks passed, from `faithfulness`' per-attribute {side: {images, accuracy}}."""
    checks = [entry for sides in table.values() for entry in sides.values()]
    total = sum(entry["images"] for entry in checks)
    return sum(entry["accuracy"] * entry["images"] for entry in checks) / total if total else float("nan")


def checkable(prompts) -> list[dict]:
    """Each prompt's expectations; FacesmithError when no prompt asks for anything the rules can check."""
    from facesmith.evaluate.faithfulness import expectations

    expected = [expectations(p.prompt) for p in prompts]
    if not any(expected):
        raise FacesmithError(
            "validation_prompts: none of its prompts asks for an attribute facesmith evaluate can check "
            '(e.g. "a smiling woman with glasses", "a man without a beard"): write prompts that do'
        )
    return expected


class PromptValidation:
    """A run's validation prompt set and its scores by step (main process only)."""

    def __init__(self, prompts, classifier, out: Path, resumed_at: int, report, say, scalars=None) -> None:
        self.prompts, self.classifier, self.out = prompts, classifier, out
        self.report, self.say, self.scalars = report, say, scalars
        self.expected = checkable(prompts)
        kept = (read_validation(out) or {}) if resumed_at > 0 else {}
        self.shares = {int(k): v for k, v in kept.get("faithfulness", {}).items() if int(k) <= resumed_at}
        self.detail = {
            int(k): v for k, v in kept.get("faithfulness_detail", {}).items() if int(k) <= resumed_at
        }
        self._write()

    @classmethod
    def open(cls, config, out: Path, step: int, report, say, scalars=None) -> PromptValidation:
        """From `config.validation_prompts` and `config.attribute_classifier`, checked before training."""
        from facesmith.attributes.classifier import SHIPPED, AttributeClassifier
        from facesmith.train.sampling import read_prompt_file

        prompts = read_prompt_file(config.validation_prompts)
        checkable(prompts)  # before the classifier loads: the prompts are the likelier mistake
        classifier = AttributeClassifier.load(config.attribute_classifier or SHIPPED)
        return cls(prompts, classifier, out, step, report, say, scalars)

    def at(self, step: int, model, config, resolution: int, device) -> float:
        """Generate the prompt set with the model as it is now and score it."""
        from facesmith.evaluate.faithfulness import faithfulness
        from facesmith.train.sampling import sample_images

        pipe = model.pipe
        was_training = pipe.unet.training
        pipe.unet.eval()
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        try:
            with torch.random.fork_rng(devices=devices):
                images = sample_images(
                    pipe,
                    self.prompts,
                    config.sample_sampler or model.default_sampler,
                    resolution,
                    device,
                    progress=lambda done, count: self.report("validating prompts", done, count, step=step),
                    cfg=model.default_cfg,
                )
        finally:
            pipe.unet.train(was_training)
        table = faithfulness(self.expected, self.classifier.predict(images))
        value = overall_share(table)
        self.shares[step], self.detail[step] = value, table
        self._write()
        self.report("validating prompts", len(images), len(images), step=step, val_faithfulness=value)
        self.say(f"step {step}: val_faithfulness {value:.3f} ({len(images)} prompts)")
        if self.scalars is not None:
            self.scalars({"val_faithfulness": value}, step=step)
        return value

    def _write(self) -> None:
        update_validation_json(
            self.out,
            faithfulness={str(s): v for s, v in sorted(self.shares.items())},
            faithfulness_detail={str(s): v for s, v in sorted(self.detail.items())},
            validation_prompts=[p.prompt for p in self.prompts],
        )
