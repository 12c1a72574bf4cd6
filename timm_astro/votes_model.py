"""A model trained on Galaxy Zoo votes, on disk: exported with its task and decision tree, loaded back with them.

An export is ``timm_astro.hub.export_model``'s Hub-ready folder (``config.json``, ``model.safetensors``,
``README.md``: a card for vote fractions) whose ``config.json`` also holds, at its top level, ``"task": "votes"``,
``"tree"`` (the decision tree's JSON form), ``"concentration"`` (how outputs become Dirichlet concentrations) and
``label_descriptions`` (each answer's text); its ``label_names`` are the answers, in output order. They sit at the
top level because timm's ``PretrainedCfg`` refuses keys it does not know, so ``timm.create_model('local-dir:...',
pretrained=True)`` loads the folder as a plain model with one output per answer, and ``load_votes_model`` puts
``task``, ``tree`` and ``concentration`` into its ``pretrained_cfg``. Exports written before the card knew the task
(the keys added to config.json after ``export_model``) have the same config.json and load the same way.
"""
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch.nn as nn

from timm_astro.data.decision_tree import DecisionTree, tree_from_dict
from timm_astro.errors import UserError
from timm_astro.losses import CONCENTRATION_MAP

__all__ = ['VOTES_TASK', 'CONCENTRATION_MAP', 'VOTES_KEYS', 'is_votes_model', 'export_votes_model',
           'load_votes_model']

PathLike = Union[str, os.PathLike]
VOTES_TASK = 'votes'
VOTES_KEYS = ('task', 'tree', 'concentration')  # what a votes model carries in pretrained_cfg once loaded


def is_votes_model(model: nn.Module) -> bool:
    """True for a model trained on votes (loaded with ``load_votes_model``): its outputs are one per answer."""
    return (getattr(model, 'pretrained_cfg', None) or {}).get('task') == VOTES_TASK


def export_votes_model(model: nn.Module, out_dir: PathLike, tree: DecisionTree, *, overwrite: bool = False,
                       **export_kwargs: Any) -> Path:
    """``hub.export_model`` for a votes model, with the task, tree and answer texts in ``config.json`` and a model
    card that says what the outputs are.

    ``export_model`` builds the whole folder beside ``out_dir`` and renames it into place, so ``out_dir`` never
    holds an export without its tree. ``export_kwargs`` go to ``export_model`` (``data_config``, ``metrics``,
    ``train_args``, ``dataset``); the label names are the tree's answers.
    """
    from timm_astro.hub import export_model
    if getattr(model, 'num_classes', None) != tree.n_answers:
        raise UserError(f'the model has {getattr(model, "num_classes", None)} outputs but the {tree.name} tree has '
                        f'{tree.n_answers} answers; expected one output per answer')
    saved_cfg = model.pretrained_cfg
    model.pretrained_cfg = {k: v for k, v in saved_cfg.items() if k not in VOTES_KEYS}  # timm refuses them there
    try:
        return export_model(model, out_dir, label_names=tree.answer_names, overwrite=overwrite,
                            extra_config={'task': VOTES_TASK, 'tree': tree.to_dict(),
                                          'concentration': CONCENTRATION_MAP,
                                          'label_descriptions': {a.name: a.text for a in tree.answers}},
                            **export_kwargs)
    finally:
        model.pretrained_cfg = saved_cfg


def _export_config(spec: str) -> Optional[Dict[str, Any]]:
    """The config.json of a ``local-dir:`` or ``hf-hub:`` export (the Hub's from the cache load_model filled)."""
    source, _, where = spec.partition(':')
    if source == 'local-dir':
        path = Path(where) / 'config.json'
    else:
        from huggingface_hub import hf_hub_download
        repo, _, revision = where.partition('@')
        path = Path(hf_hub_download(repo, 'config.json', revision=revision or None))
    return json.loads(path.read_text(encoding='utf-8'))


def _votes_info(found: Mapping[str, Any], source: str, num_outputs: int) -> Dict[str, Any]:
    tree = tree_from_dict(found.get('tree'), f'the tree in {source}')
    if tree.n_answers != num_outputs:
        raise UserError(f'{source}: its tree has {tree.n_answers} answers but the model has {num_outputs} outputs')
    concentration = found.get('concentration', CONCENTRATION_MAP)
    if concentration != CONCENTRATION_MAP:
        raise UserError(f'{source}: concentration {concentration!r}; this version maps outputs as '
                        f'{CONCENTRATION_MAP!r} only')
    return {'task': VOTES_TASK, 'tree': tree.to_dict(), 'concentration': concentration}


def load_votes_model(spec: str, checkpoint: Optional[PathLike] = None, **kwargs: Any) -> nn.Module:
    """``timm_astro.loading.load_model(spec, checkpoint, **kwargs)``, with ``task``, ``tree`` and ``concentration``
    in the model's ``pretrained_cfg`` when it was trained on votes: an export (``local-dir:`` / ``hf-hub:``) whose
    config.json says so, or a ``train-votes`` checkpoint (``last.pth.tar``). Any other model loads unchanged;
    ``is_votes_model`` tells them apart."""
    from timm_astro.loading import load_model
    model = load_model(spec, checkpoint, **kwargs)
    found: Optional[Mapping[str, Any]] = None
    source = spec
    if spec.startswith(('local-dir:', 'hf-hub:')):
        found = _export_config(spec)
        source = f'{spec} config.json'
    else:
        path = Path(checkpoint if checkpoint is not None else spec)
        if path.is_file() and path.suffix != '.safetensors':
            from timm_astro.loading import _read_pickle  # read safely, as load_model just did
            stored = _read_pickle(path)
            found = stored if isinstance(stored, Mapping) else None
            source = str(path)
    if found and found.get('task') == VOTES_TASK:
        model.pretrained_cfg = {**model.pretrained_cfg, **_votes_info(found, source, model.num_classes)}
        if isinstance(found.get('data_config'), Mapping):  # a checkpoint: the preprocessing it trained with
            model.pretrained_cfg.update({k: tuple(v) if isinstance(v, list) else v
                                         for k, v in found['data_config'].items()})
        model.pretrained_cfg['label_names'] = [a['name'] for q in model.pretrained_cfg['tree']['questions']
                                               for a in q['answers']]
    return model
