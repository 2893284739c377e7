"""Publishing a trained extractor to the Hugging Face Hub: stage its repository folder (the extractor, a timm copy
where one can hold it, the card) with no network; :func:`d3s.hub.upload_folder` pushes it.

The card is ``huggingface_hub``'s ``ModelCard``: the checkpoint's probe, spurious and benchmark numbers are its
``eval_results``, which the Hub renders as ``model-index``. Datasets are staged by :mod:`d3s.hub`.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .dataset import HUB_ID
from .hub import PAPER_CITATION, PublishError, check_repo_id

if TYPE_CHECKING:
    import torch


def timm_backbone(model) -> "torch.nn.Module | None":
    """The extractor as a plain timm classifier: its backbone, with the fg head as ``fc`` over all features
    (zero weights on z_bg), so it predicts exactly what the extractor's fg head predicts.

    An extractor from a frozen-features checkpoint has a neck: a linear one folds into ``fc``
    (``W_fg A_fg x + W_fg a_fg + b``); an MLP neck cannot be held by timm's linear classifier, and
    then there is no timm-format copy (None).

    A LEACE eraser on z_fg (``d3s erase``) is affine too, ``z_fg -> P z_fg + (I - P) mu``: it folds into the fg
    head first (``W_fg P``, ``b + W_fg (I - P) mu``, :meth:`~d3s.models.DisentangledExtractor.fg_head_on_z_fg`),
    so the timm copy predicts what the fg head on the erased z_fg predicts.
    """
    import torch

    from .offline_weights import create_timm_model

    affine = None if isinstance(model.neck, torch.nn.Identity) else model.neck.as_affine()
    if affine is None and not isinstance(model.neck, torch.nn.Identity):
        return None
    net = create_timm_model(model.backbone_name, pretrained=False, num_classes=len(model.fg_names), **(model.backbone_args or {}))
    state = dict(model.backbone.state_dict())
    head = net.get_classifier()
    prefix = next(name for name, module in net.named_modules() if module is head)
    w_fg, b_fg = model.fg_head_on_z_fg()  # the z_fg eraser, if any, folded in
    if affine is None:  # z is the backbone's features: the fg head reads the first fg_dim of them
        weight = torch.zeros(len(model.fg_names), model.backbone.num_features)
        weight[:, : model.fg_dim] = w_fg
        bias = b_fg.clone()
    else:
        a, c = affine
        weight, bias = w_fg @ a[: model.fg_dim], w_fg @ c[: model.fg_dim] + b_fg
    state[f"{prefix}.weight"], state[f"{prefix}.bias"] = weight, bias
    net.load_state_dict(state, strict=True)
    net.pretrained_cfg = {**(net.pretrained_cfg or {}), "mean": tuple(model.mean), "std": tuple(model.std),
                          "input_size": (3, model.image_size, model.image_size), "num_classes": len(model.fg_names)}
    if model.preprocessing:  # a frozen checkpoint's: resize and crop as its features were made
        net.pretrained_cfg.update({k: model.preprocessing[k] for k in ("interpolation", "crop_pct", "crop_mode")})
    return net.eval()


PROBE_NAMES = ("fg_from_fg", "bg_from_bg", "fg_from_bg", "bg_from_fg")
PROBE_TITLES = {"linear": "Linear probes", "mlp": "MLP probes (a linear path and one hidden layer)",
                "kernel": "Kernel probes (RBF kernel ridge)"}
SPURIOUS_SETS = {"correct": "heads on z_fg / z_bg", "all": "heads on all of z"}
METHOD_TEXT = {
    "wasserstein": "Wasserstein disentanglement, the paper's method (critics measure what z_fg tells of the background "
                   "and z_bg of the foreground; the extractor is trained to make both small)",
    "adversarial": "adversarial disentanglement (DANN / CDANN style: classifiers of the other label as adversaries)",
    "erm": "ERM, a baseline (cross-entropy of the fg head alone)",
    "groupdro": "GroupDRO, a baseline (the backgrounds as groups)",
    "irm": "IRM, a baseline (the backgrounds as environments)",
}


def _is_hub_id(text: str | None) -> bool:
    """Whether ``text`` names a Hub repository (``ORG/NAME``) rather than a local folder that exists here."""
    return bool(text) and "/" in text and not text.startswith(("/", ".")) and bool(HUB_ID.fullmatch(text)) and not Path(text).exists()


def _data_ref(source: str | None, dataset: str | None) -> tuple[str, str]:
    """``(dataset_type, dataset_name)`` of results measured on ``source``: a Hub id as it is; else ``dataset`` (the Hub
    id given for the data); else the local folder's name only (the card is public: no local path)."""
    if source and _is_hub_id(source):
        return source, source
    if dataset:
        return dataset, dataset
    if source:
        name = Path(str(source).rstrip("/")).name
        return name, f"{name} (a local folder, not on the Hub)"
    return "d3s", "D3S data (which copy is not recorded)"


def _reference_ref(source: str | None) -> tuple[str, str, str | None]:
    """``(dataset_type, dataset_name, split)`` of a benchmark's ImageNet reference (``hf:ID:split`` or a local folder)."""
    if source and source.startswith("hf:"):
        _, repo, *split = source.split(":", 2)
        return repo, repo, (split or [None])[0]
    name = Path(str(source or "imagenet").rstrip("/")).name
    return name, f"{name} (a local ImageNet folder)", None


def benchmark_results(results: str | Path, checkpoint: str | Path) -> list[dict]:
    """The `d3s benchmark` and `d3s bgchallenge` results in ``results`` (their ``--out`` folder) of exactly this
    checkpoint: ``d3s:`` models whose recorded weights digest is that of ``checkpoint``'s ``model.safetensors`` (a
    result of the weights before `d3s erase` rewrote them is not this checkpoint's, and is left out).

    Args:
        results (`str` or `Path`): a results folder (``models/*.json``; ``bgchallenge/models/*.json``).
        checkpoint (`str` or `Path`): the checkpoint folder.

    Raises :class:`PublishError` when ``results`` is not a folder or holds no result of this checkpoint.
    """
    from .bgchallenge import SUBDIR
    from .classifiers import ClassifierError, extractor_files
    from .results import MODELS_DIR

    results = Path(results)
    if not results.is_dir():
        raise PublishError(f"--results {results} is not a folder; give the --out folder of `d3s benchmark` or `d3s bgchallenge`.")
    try:
        _, digest = extractor_files(str(checkpoint))
    except ClassifierError as err:
        raise PublishError(str(err)) from None
    found = []
    for folder in (results / MODELS_DIR, results / SUBDIR / MODELS_DIR):
        for path in sorted(folder.glob("*.json")):
            try:
                result = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if result.get("kind") == "d3s" and (result.get("identity") or {}).get("weights") == digest:
                found.append(result)
    if not found:
        raise PublishError(f"--results {results} holds no result of {checkpoint} (weights {digest}); run `d3s benchmark "
                           f"--models d3s:{checkpoint} --out {results}` first, or leave --results out.")
    return found


def eval_results(probe: dict | None, spurious: dict | None, benchmark: list[dict] | None = None,
                 data: tuple[str, str] = ("d3s", "D3S data (which copy is not recorded)"), dataset: str | None = None) -> list:
    """The checkpoint's results as ``huggingface_hub.EvalResult`` s (the card's ``model-index``), top-1 accuracies:

    - ``probe.json``: each probe kind (linear, MLP) and probe (fg_from_fg, bg_from_bg, fg_from_bg, bg_from_fg) on each
      split of the data (the ImageNet rows, whose data is not recorded, stay in the card's tables);
    - ``spurious.json``: the averages and the worst group of the heads on z_fg / z_bg and on all of z (the baseline's
      numbers are another model's: table only);
    - ``benchmark``: `d3s benchmark` top-1 / top-5 on its split and on the ImageNet reference, and the Backgrounds
      Challenge's IN-9 accuracy per variation (:func:`benchmark_results`).

    Args:
        probe (`dict`, *optional*): ``probe.json``.
        spurious (`dict`, *optional*): ``spurious.json``.
        benchmark (`list[dict]`, *optional*): result records of this checkpoint.
        data (`tuple[str, str]`, defaults to an unrecorded D3S copy): ``(dataset_type, dataset_name)`` of the probes'
            and the spurious experiment's data.
        dataset (`str`, *optional*): the Hub id of the D3S data, for benchmark results on a local folder.
    """
    from huggingface_hub import EvalResult

    from .probes import by_kind, scored_splits

    out: list = []

    def add(value, metric: str, split: str | None, ref: tuple[str, str], config: str | None = None) -> None:
        if isinstance(value, (int, float)) and math.isfinite(value):
            out.append(EvalResult(task_type="image-classification", task_name="Image Classification", dataset_type=ref[0],
                                  dataset_name=ref[1], dataset_config=config, dataset_split=split, metric_type="accuracy",
                                  metric_name=metric, metric_value=round(float(value), 4)))

    for kind, result in by_kind(probe or {}).items():
        for split, probes in scored_splits(result):
            if split == "imagenet":
                continue
            for name in PROBE_NAMES:
                if name in probes:
                    add(probes[name]["top1"], f"{kind} probe {name} top-1", split, data)
    for key, label in SPURIOUS_SETS.items():
        for col in ("average", "average_4", "worst"):
            if col in (spurious or {}).get(key, {}):
                what = {"average": "average of 5 (4 D3S columns and IN-9 fg)", "average_4": "average of 4", "worst": "worst group"}[col]
                add(spurious[key][col], f"spurious correlation {what}, {label}", "validation", data)
    for r in benchmark or []:
        if "d3s" in r:
            d = r["data"]["d3s"]
            ref = _data_ref(d.get("source"), dataset)
            add(r["d3s"]["top1"], "fg head top-1 (ImageNet classes)", d.get("split"), ref)
            add(r["d3s"]["top5"], "fg head top-5 (ImageNet classes)", d.get("split"), ref)
            if r.get("imagenet"):
                kind, name, split = _reference_ref((r["data"].get("imagenet") or {}).get("source"))
                add(r["imagenet"]["top1"], "fg head top-1", split or "validation", (kind, name))
                add(r["imagenet"]["top5"], "fg head top-5", split or "validation", (kind, name))
        elif "variations" in r:
            folder = Path(str(r["data"]["bgchallenge"].get("source", "bgchallenge")).rstrip("/")).name
            ref = (folder, f"Backgrounds Challenge, IN-9 (local folder {folder})")
            for variation, v in r["variations"].items():
                add(v["top1"], f"IN-9 accuracy, {variation}", "val", ref, config=variation)
            if r.get("adversarial"):
                add(r["adversarial"]["accuracy"], "IN-9 accuracy, adversarial backgrounds", "val", ref, config="adversarial")
    return out


def _metrics_tables(probe: dict | None, spurious: dict | None, benchmark: list[dict] | None = None, dataset: str | None = None) -> str:
    """The card's result tables (what its ``model-index`` holds, with top-5, chance and the baseline)."""
    from .probes import by_kind, scored_splits

    parts = []
    for kind, result in by_kind(probe or {}).items():
        chance = result.get("chance", {})
        title = PROBE_TITLES.get(kind, kind)
        chance_text = ", ".join(f"{label} {chance[label]:.3f}" for label in ("fg", "bg")
                                if isinstance(chance.get(label), (int, float)) and math.isfinite(chance[label]))
        for split, probes in scored_splits(result):
            names = [n for n in PROBE_NAMES if n in probes]
            rows = "\n".join(f"| {name} | {probes[name]['top1']:.3f} | {probes[name]['top5']:.3f} |" for name in names)
            where = "ImageNet rows (fg labels only)" if split == "imagenet" else f"`{split}`"
            fitted = ((result.get("fit") or {}).get(split) or {}).get("text", "fitted on train, the rows the model was fitted on")
            parts.append(f"### {title} on frozen features, {where} (paper, Table 2)\n\n| probe | top-1 | top-5 |\n|---|---|---|\n"
                         f"{rows}\n\nProbes {fitted}. " + (f"Chance: {chance_text}. " if chance_text else "")
                         + "fg_from_bg and bg_from_fg measure leakage: the closer to chance, the better.")
    if spurious:
        cols = [c for c in ("corr_fg", "anticorr_fg", "corr_bg", "anticorr_bg", "imagenet_fg", "average", "average_4", "worst")
                if c in spurious.get("correct", {})]
        rows = "\n".join(f"| {name} | " + " | ".join(f"{spurious[name][c]:.3f}" for c in cols) + " |"
                         for name in ("correct", "all", "baseline") if name in spurious)
        parts.append("### Spurious-correlation experiment, `validation` (paper, Table 3)\n\n| features | " + " | ".join(cols)
                     + " |\n|---|" + "---|" * len(cols) + "\n" + rows
                     + "\n\n`correct`: the fg head on z_fg and the bg head on z_bg; `all`: both on all of z; `baseline`: "
                       "the same heads on another model's features (not in the model index).")
    bench = [r for r in benchmark or [] if "d3s" in r]
    if bench:
        lines = ["| data | split | images | top-1 | top-5 | ImageNet top-1 | drop (top-1) | precision |", "|---|---|---|---|---|---|---|---|"]
        for r in bench:
            d, im = r["d3s"], r.get("imagenet") or {}
            name = _data_ref(r["data"]["d3s"].get("source"), dataset)[0]
            imagenet = f"{im['top1']:.3f}" if im else "not run"
            drop = f"{r['drop_top1']:.3f}" if r.get("drop_top1") is not None else "not run"
            lines.append(f"| {name} | {r['data']['d3s'].get('split')} | {d['n']} | {d['top1']:.3f} | {d['top5']:.3f} | {imagenet} "
                         f"| {drop} | {r.get('precision', 'unrecorded')} |")
        parts.append("### D3S benchmark (`d3s benchmark`; paper, section 4)\n\nThe fg head as an ImageNet classifier.\n\n"
                     + "\n".join(lines))
    challenge = [r for r in benchmark or [] if "variations" in r]
    if challenge:
        from .bgchallenge import TITLES, VARIATIONS

        cols = [v for v in VARIATIONS if any(v in r["variations"] for r in challenge)]
        lines = ["| " + " | ".join(TITLES[c] for c in cols) + " | BG-Gap | Adversarial | precision |",
                 "|" + "---|" * (len(cols) + 3)]
        for r in challenge:
            cells = [f"{100 * r['variations'][c]['top1']:.1f}" if c in r["variations"] else "not run" for c in cols]
            gap = f"{100 * r['bg_gap']:.1f}" if r.get("bg_gap") is not None else "not run"
            adv = f"{100 * r['adversarial']['accuracy']:.1f} ({r['adversarial']['n']} foregrounds)" if r.get("adversarial") else "not run"
            lines.append("| " + " | ".join(cells) + f" | {gap} | {adv} | {r.get('precision', 'unrecorded')} |")
        parts.append("### Backgrounds Challenge (`d3s bgchallenge`; paper, Table 4)\n\nIN-9 accuracy (%) per variation; BG-Gap: "
                     "Mixed-Same minus Mixed-Rand (points).\n\n" + "\n".join(lines))
    return "\n\n".join(parts)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _base_model(backbone: str | None, pretrained: bool) -> str | None:
    """The Hub id of the pretrained backbone weights the extractor started from, when there is one."""
    if not backbone or not pretrained or backbone.startswith("local-dir:"):
        return None
    if backbone.startswith("hf-hub:"):
        return backbone[len("hf-hub:"):]
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(backbone)
    except Exception:  # not a timm name
        return None
    return getattr(cfg, "hf_hub_id", None) or None


def stage_checkpoint(checkpoint: str | Path, out: str | Path, repo_id: str, probe_json: str | Path | None = None,
                     spurious_json: str | Path | None = None, backbone: str | None = None, dataset: str | None = None,
                     results: str | Path | None = None) -> dict:
    """Write the model repository for ``repo_id`` into ``out``: the extractor (``PyTorchModelHubMixin``:
    ``model.safetensors`` + ``config.json``), a model card with its results (:func:`checkpoint_card`), and the
    backbone in timm's format under ``timm/`` (``timm.create_model("local-dir:OUT/timm", pretrained=True)``;
    published also as ``<repo-id>-timm`` for ``hf-hub:``). Fails before writing anything on bad input.

    A checkpoint trained on frozen features is published as the full image extractor: its backbone (the
    recorded one, or ``backbone``) with the trained neck and heads. With an MLP neck there is no timm
    format copy (see :func:`timm_backbone`); the card says so.

    A checkpoint with LEACE erasers (``d3s erase``) keeps them (buffers of the model); its ``erasure.json``
    (heads and probes before and after erasure) is published beside ``probe.json`` and shown on the card.

    Args:
        checkpoint (`str` or `Path`): a ``d3s train --out`` folder.
        out (`str` or `Path`): a new or empty folder for the repository.
        repo_id (`str`): ``ORG/NAME``.
        probe_json (`str` or `Path`, *optional*): probe results (default: ``CHECKPOINT/probe.json``, required).
        spurious_json (`str` or `Path`, *optional*): spurious results (default: ``CHECKPOINT/spurious.json``, if any).
        backbone (`str`, *optional*): a frozen-features checkpoint's backbone (default: the recorded one).
        dataset (`str`, *optional*): the Hub id of the D3S dataset the results were measured on (default: the training
            data of ``run.json`` when it is a Hub id; else the results name the local folder).
        results (`str` or `Path`, *optional*): a ``d3s benchmark`` / ``d3s bgchallenge`` ``--out`` folder; its results
            of this checkpoint (:func:`benchmark_results`) go on the card.
    """
    from .models import ModelError, checkpoint_config, is_frozen, load_extractor

    check_repo_id(repo_id)
    if dataset and not _is_hub_id(dataset):
        raise PublishError(f"--dataset must be a Hub dataset id (ORG/NAME), got {dataset!r}.")
    checkpoint, out = Path(checkpoint), Path(out)
    try:
        model = load_extractor(str(checkpoint), backbone)
        config = checkpoint_config(str(checkpoint))
        frozen = is_frozen(config)
    except ModelError as err:
        raise PublishError(str(err)) from err
    probe_path = Path(probe_json) if probe_json else checkpoint / "probe.json"
    spurious_path = Path(spurious_json) if spurious_json else checkpoint / "spurious.json"
    run = (_read_json(checkpoint / "run.json") or {}).get("config", {})
    if not probe_path.is_file():
        data_arg = run.get("data") or "DATA"  # the data it was trained on, when run.json records it
        raise PublishError(f"no metrics for {checkpoint}: {probe_path} is missing; run `d3s probe --data {data_arg} --checkpoint "
                           f"{checkpoint} --out {probe_path}` (and `d3s spurious`) first, or pass --probe FILE.")
    probe = json.loads(probe_path.read_text())
    spurious = json.loads(spurious_path.read_text()) if spurious_path.is_file() else None
    erasure_path = checkpoint / "erasure.json"
    erasure = json.loads(erasure_path.read_text()) if model.erasure and erasure_path.is_file() else None
    bench = benchmark_results(results, checkpoint) if results else []
    if out.exists() and any(out.iterdir()):
        raise PublishError(f"{out} is not empty; give a new folder for the staged repository.")

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    shutil.copy(probe_path, out / "probe.json")
    if spurious:
        shutil.copy(spurious_path, out / "spurious.json")
    if erasure:
        shutil.copy(erasure_path, out / "erasure.json")
    from timm.models import save_for_hf

    net = timm_backbone(model)
    if net is not None:
        save_for_hf(net, str(out / "timm"), model_config={"label_names": list(model.fg_names)}, safe_serialization=True)
    pretrained = bool(config.get("pretrained", True)) if frozen else bool(run.get("pretrained", False))
    card = checkpoint_card(repo_id, model, probe, spurious, frozen=frozen, has_timm=net is not None, erasure=erasure,
                           run=run, dataset=dataset, benchmark=bench,
                           base_model=_base_model(backbone or model.backbone_name, pretrained))
    card.save(out / "README.md")
    n_results = len(card.data.eval_results or [])
    return {"repo_id": repo_id, "folder": str(out), "timm_repo_id": f"{repo_id}-timm" if net is not None else None,
            "eval_results": n_results,
            "summary": f"staged {model.backbone_name} extractor ({len(model.fg_names)} fg / {len(model.bg_names)} bg classes) "
                       f"with {'probe and spurious' if spurious else 'probe'} results"
                       f"{f' and {len(bench)} benchmark result(s)' if bench else ''} ({n_results} in the model index) in {out}"}


def checkpoint_card(repo_id: str, model, probe: dict, spurious: dict | None, frozen: bool = False, has_timm: bool = True,
                    erasure: dict | None = None, run: dict | None = None, dataset: str | None = None,
                    benchmark: list[dict] | None = None, base_model: str | None = None):
    """The model card (a ``huggingface_hub.ModelCard``): what the extractor is and how to load it, its results as
    ``eval_results`` (the Hub renders the ``model-index``; :func:`eval_results`) and as tables.

    Args:
        repo_id (`str`): ``ORG/NAME``.
        model (`DisentangledExtractor`): the extractor published.
        probe (`dict`): ``probe.json``.
        spurious (`dict`, *optional*): ``spurious.json``.
        frozen (`bool`, defaults to `False`): trained on a backbone's frozen features.
        has_timm (`bool`, defaults to `True`): a timm-format copy is published as ``<repo_id>-timm``.
        erasure (`dict`, *optional*): ``erasure.json``.
        run (`dict`, *optional*): the ``config`` of ``run.json`` (training method and data).
        dataset (`str`, *optional*): the Hub id of the D3S dataset the results were measured on.
        benchmark (`list[dict]`, *optional*): ``d3s benchmark`` / ``d3s bgchallenge`` results of this checkpoint.
        base_model (`str`, *optional*): the Hub id of the backbone's pretrained weights.
    """
    from huggingface_hub import ModelCard, ModelCardData

    run = run or {}
    data_source = run.get("data")
    data = (dataset, dataset) if dataset else _data_ref(data_source, None)  # what the probes and the spurious experiment read
    hub_data = sorted({d for d in (dataset, data_source if _is_hub_id(data_source) else None) if d})
    results = eval_results(probe, spurious, benchmark, data, dataset)
    meta = ModelCardData(
        library_name="d3s", license="mit", pipeline_tag="image-classification",
        tags=["d3s", "disentanglement", "image-classification"] + (["timm"] if has_timm else []),
        base_model=base_model, datasets=hub_data or None, model_name=repo_id.split("/")[-1], eval_results=results or None)

    method = run.get("method")
    trained = (f"Trained with `d3s train --method {method}`: {METHOD_TEXT.get(method, method)}" if method
               else "How it was trained is not recorded with the checkpoint (no `run.json`)")
    if data_source:
        kind, name = _data_ref(data_source, None)
        trained += f", on `{kind}`" + ("." if kind == name else " (a local folder, not on the Hub).")
    else:
        trained += "."
    if frozen:
        kind = "an affine map" if model.neck.as_affine() is not None else "an MLP (affine map plus one hidden GELU layer)"
        how = (f"An extractor on the frozen features of `{model.backbone_name}` (`d3s embed`, then `d3s train` on them): the "
               f"backbone's weights are {'its pretrained ones' if base_model else 'the ones that made the features'}, unchanged; "
               f"a neck ({kind}) maps its {model.backbone.num_features} features to z, "
               f"split into z_fg ({model.fg_dim}) and z_bg ({model.bg_dim}), with a {len(model.fg_names)}-class foreground head on "
               f"z_fg and a {len(model.bg_names)}-class background head on z_bg (backgrounds: {', '.join(model.bg_names)}). "
               "Prepare images with the backbone's own preprocessing, the one the features were made with: "
               "`model.input_transform()(pil_image)` gives the uint8 input.")
    else:
        how = (f"A `{model.backbone_name}` whose {model.num_features} features are split into z_fg ({model.fg_dim}) and z_bg "
               f"({model.bg_dim}), with a {len(model.fg_names)}-class foreground head on z_fg and a {len(model.bg_names)}-class "
               f"background head on z_bg (backgrounds: {', '.join(model.bg_names)}), after *Invariant Learning via Diffusion "
               "Dreamed Distribution Shifts*.")
    if has_timm:
        timm_use = f"""
import timm                                     # the backbone with the fg head, in timm's format
net = timm.create_model("hf-hub:{repo_id}-timm", pretrained=True)"""
        timm_note = ""
    else:
        timm_use = ""
        timm_note = ("\nNo timm-format copy: the foreground head sits on a nonlinear (MLP) neck, which timm's linear classifier "
                     "cannot hold" + (" (so there is no timm copy of the LEACE eraser either)" if model.erasure else "")
                     + ". Load it with d3s as above.\n")
    index = (f"The card's model index (`model-index`) holds {len(results)} of these accuracies, on "
             + ", ".join(sorted({f"`{r.dataset_type}` ({r.dataset_split})" for r in results})) + "."
             if results else "There is no finite result to put in the card's model index.")
    body = f"""# {repo_id.split('/')[-1]}: a foreground/background disentangled `{model.backbone_name}`

{how}

{trained}

```python
from d3s.models import DisentangledExtractor
model = DisentangledExtractor.from_pretrained("{repo_id}")
z_fg, z_bg = model.features(images)            # uint8 or [0, 1] images, (N, 3, {model.image_size}, {model.image_size}){timm_use}
```
{timm_note}{_erasure_section(model, erasure, has_timm)}
## Results

{index} Beside the weights, `probe.json`{', `spurious.json`' if spurious else ''}{' and `erasure.json`' if erasure else ''} hold the full records.

{_metrics_tables(probe, spurious, benchmark, dataset)}

## Licence and citation

The d3s code and these weights: MIT.{f' The backbone started from `{base_model}`, under its own licence.' if base_model else ''}

```bibtex
{PAPER_CITATION}
```
"""
    return ModelCard(f"---\n{meta.to_yaml()}\n---\n\n{body}")


def _erasure_section(model, erasure: dict | None, has_timm: bool) -> str:
    """The card's account of the checkpoint's LEACE erasers (none: empty), with heads and probes before and after."""
    if not model.erasure:
        return ""
    e = model.erasure
    parts = [f"z_fg of the background label (rank {e['z_fg']['rank']} of {model.fg_dim})" if e["z_fg"]["erases"] else None,
             f"z_bg of the foreground label (rank {e['z_bg']['rank']} of {model.bg_dim})" if e["z_bg"]["erases"] else None]
    what = " and ".join(p for p in parts if p)
    rows = f" of the `{e['split']}` split ({e['rows']} rows)" if e.get("split") else ""
    timm = (" The timm copy holds the z_fg eraser folded into its classifier: it predicts what the fg head on the erased "
            "z_fg predicts." if has_timm and e["z_fg"]["erases"] else "")
    text = (f"\n## Linear concept erasure (LEACE)\n\nThis checkpoint erases {what} with LEACE (Belrose et al., *LEACE: Perfect "
            f"linear concept erasure in closed form*, NeurIPS 2023; the `concept-erasure` package), fitted on the model's "
            f"features{rows}: on those rows no linear classifier reads the erased label from that part better than a constant "
            "(by construction), and the features change least. On other rows the guarantee holds only as far as the class "
            "means carry over, so the figures below are measured on rows the erasers never saw. The erasers are buffers of the "
            "model, applied in its forward: `model.features()`, both heads and the results below read the erased features. A "
            f"nonlinear probe can still read what is left.{timm}\n")
    if not erasure or not erasure.get("eval_split"):
        return text + "\nNo held-out rows were measured: the guarantee is shown on the fitted rows only.\n"
    split = erasure["eval_split"]
    lines = ["| measure | before | after |", "|---|---|---|"]
    for head in ("fg_head", "bg_head"):
        b, a = erasure["heads"]["before"].get(head), erasure["heads"]["after"].get(head)
        if b is not None:
            lines.append(f"| {head.replace('_', ' ')} accuracy | {b:.3f} | {a:.3f} |")
    fitted = "probes fitted on the erasers' split"  # reports written before held-out probes existed
    for kind, before in (erasure.get("probes") or {}).get("before", {}).items():
        fitted = ((before.get("fit") or {}).get(split) or {}).get("text", fitted)
        chance = before.get("chance", {})
        for name, r in before.get(split, {}).items():
            c = chance.get(name.split("_")[0])
            lines.append(f"| {kind} probe {name} (chance {c:.3f}) | {r['top1']:.3f} | {erasure['probes']['after'][kind][split][name]['top1']:.3f} |"
                         if isinstance(c, (int, float)) else
                         f"| {kind} probe {name} | {r['top1']:.3f} | {erasure['probes']['after'][kind][split][name]['top1']:.3f} |")
    warnings = "".join(f"\n> {w}.\n" for w in erasure.get("warnings", []))
    return text + f"\nTop-1 on `{split}`, before and after erasure ({fitted}):\n\n" + "\n".join(lines) + "\n" + warnings


__all__ = ["stage_checkpoint", "timm_backbone", "checkpoint_card", "eval_results", "benchmark_results"]
