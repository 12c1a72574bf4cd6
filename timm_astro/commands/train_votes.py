"""``timm-astro train-votes MODEL DATA --out DIR``: train a model on Galaxy Zoo volunteer votes.

The model gets one output per answer of the vote set's decision tree and trains with the Dirichlet-multinomial
likelihood of the vote counts (``timm_astro.losses``), through ``timm_astro.training`` (timm's create_loader,
create_optimizer_v2, create_scheduler_v2, ModelEmaV3). The recipe is train.py's keys: the built-in
``GZ2_VOTES_RECIPE`` (= ``train_configs/gz2_votes_astroformer_small.yaml``) or ``--recipe FILE``, then ``--set
KEY=VALUE`` and ``--epochs`` / ``--batch-size`` / ``--img-size``. Every option is checked before any work, and
every image of the training and validation splits is read once (as evaluate reads it): an unreadable one is refused
before training, in one line naming it.

Each epoch prints the training loss and, on the validation split, the loss and the mean absolute error of the
expected vote fractions, then replaces ``DIR/last.pth.tar`` (atomically) with everything needed to go on:
``--resume`` continues an interrupted run exactly, on the same vote set (the checkpoint holds its folder and the
sha256 of its manifest.csv; another set is refused). At the end ``DIR/model`` is a Hub-ready export (``config.json``
records ``"task": "votes"`` and the tree; the answers are its ``label_names``: ``timm_astro.votes_model``), reloaded
with ``load_votes_model`` (``timm_astro.loading.load_model`` underneath) and checked to give identical outputs and
the same tree; ``DIR/summary.json`` holds the history and the last validation's metrics per question.
"""
import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import yaml

from timm_astro.commands import positive_int, run_command
from timm_astro.errors import UserError

PROG = 'timm-astro train-votes'
CHECKPOINT = 'last.pth.tar'

# train_configs/gz2_votes_astroformer_small.yaml without the keys only train.py reads (the model, its number of
# outputs, AMP): tests/test_train_votes.py keeps the two equal. Provenance of each value is in that file.
GZ2_VOTES_RECIPE: Dict[str, Any] = {
    'train_split': 'train', 'val_split': 'validation',
    'img_size': 64, 'crop_pct': 1.0, 'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5],
    'scale': [0.5, 1.0], 'ratio': [1.0, 1.0],
    'batch_size': 32, 'opt': 'adamw', 'lr_base': 2.83e-3, 'weight_decay': 0.05, 'sched': 'cosine', 'epochs': 20,
    'warmup_epochs': 1, 'warmup_lr': 1e-5, 'min_lr': 1e-5,
    'mixup': 0.0, 'cutmix': 0.0, 'smoothing': 0.0, 'aa': None, 'reprob': 0.0, 'hflip': 0.5, 'vflip': 0.5,
    'color_jitter': 0.0, 'drop': 0.0, 'drop_path': 0.1, 'model_ema': False,
}


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument('model', metavar='MODEL', help='a registered timm model name (astroformer_small, ...)')
    parser.add_argument('data', metavar='DATA', help='a vote set (an import with dataset.json "kind": "votes")')
    parser.add_argument('--out', required=True, metavar='DIR', help='run folder: new or empty (or, with --resume, '
                                                                    'an interrupted run of this command)')
    parser.add_argument('--resume', action='store_true', help=f'continue the run in DIR from its {CHECKPOINT}')
    parser.add_argument('--recipe', metavar='FILE', help='a YAML recipe of train.py keys (default: the built-in '
                                                         'gz2_votes_astroformer_small recipe)')
    parser.add_argument('--set', dest='sets', nargs='*', default=[], metavar='KEY=VALUE',
                        help='recipe overrides, values read as YAML (lr=5e-4, aa=rand-m9-mstd0.5)')
    parser.add_argument('--epochs', type=positive_int, default=None)
    parser.add_argument('--batch-size', type=positive_int, default=None)
    parser.add_argument('--img-size', type=positive_int, default=None, help='input height and width')
    parser.add_argument('--tree', default=None, help="the decision tree (a shipped name or a JSON file); default: "
                                                     "the one the vote set's dataset.json names")
    parser.add_argument('--device', default='cpu', help='torch device (cpu, cuda, cuda:1, ...)')
    parser.add_argument('--workers', type=int, default=0, help='DataLoader worker processes (0: in this process)')
    return parser.parse_args(argv)


def _read_recipe(path: Optional[str]) -> Dict[str, Any]:
    if path is None:
        return dict(GZ2_VOTES_RECIPE)
    from timm_astro.loading import read_args_yaml  # safe YAML, one-line errors naming the file
    return read_args_yaml(path)


def build_recipe(args: argparse.Namespace) -> Dict[str, Any]:
    """The recipe: the file (or the built-in one), then ``--set``, then the dedicated options."""
    recipe = _read_recipe(args.recipe)
    for item in args.sets:
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise UserError(f'--set {item!r}: expected KEY=VALUE (a train.py key, e.g. lr=5e-4)')
        try:
            recipe[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise UserError(f'--set {item!r}: the value is not valid YAML ({getattr(e, "problem", e)})') from None
    for key in ('epochs', 'batch_size', 'img_size'):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    recipe.pop('input_size', None)  # img_size decides; a stale input_size from a file would contradict it
    return recipe


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f'--device {name!r}: expected a torch device (cpu, cuda, cuda:1, ...)') from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f'--device {name}: no CUDA device is available here; use --device cpu')
    return device


def _validation_metrics(model, val_set, tree, batch_size: int, device, workers: int) -> Dict[str, Any]:
    """The loss (per galaxy, summed over questions) and the fraction metrics on the validation split."""
    from timm_astro.evaluation.votes import expected_fractions, predict_votes, vote_metrics
    from timm_astro.losses import mean_galaxy_nll
    concentrations, counts = predict_votes(model, val_set, batch_size=batch_size, device=device, workers=workers)
    metrics = vote_metrics(expected_fractions(concentrations, tree).numpy(), counts.numpy(), tree)
    return {'val_loss': float(mean_galaxy_nll(concentrations, counts, tree)), 'val_fraction_mae': metrics['mean_mae'],
            'metrics': metrics}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import timm
    from timm.data import create_transform, resolve_model_data_config
    from timm.utils import random_seed

    from timm_astro.data.decision_tree import load_tree
    from timm_astro.data.images import reader_for_model
    from timm_astro.data.votes import VotesDataset, manifest_sha256, read_vote_set_info
    from timm_astro.losses import DirichletMultinomialLoss
    from timm_astro.outputs import atomic_file, check_output_location
    from timm_astro.training import check_own_loss_args, check_resumable, read_checkpoint, train_args, \
        train_classifier
    from timm_astro.votes_model import export_votes_model, is_votes_model, load_votes_model

    # --- every check before any work
    recipe = build_recipe(args)
    train = train_args(recipe)  # train.py's ranges; unknown keys refused
    check_own_loss_args(train)  # no Mixup, no label smoothing: the targets are vote counts
    if args.workers < 0:
        raise UserError(f'--workers must be at least 0, got {args.workers}')
    device = _device(args.device)
    info = read_vote_set_info(args.data)
    if args.tree is None and not info.get('tree'):
        raise UserError(f'{Path(args.data) / "dataset.json"}: names no "tree"; give the decision tree with --tree '
                        f'(a shipped name or a JSON file)')
    tree = load_tree(args.tree if args.tree is not None else info['tree'])
    if recipe.get('num_classes') not in (None, tree.n_answers):
        raise UserError(f"the recipe has num_classes={recipe['num_classes']}, but the {tree.name} tree has "
                        f"{tree.n_answers} answers (one output each); remove num_classes or set it to "
                        f"{tree.n_answers}")
    if recipe.get('model') not in (None, args.model):
        raise UserError(f"the recipe names model {recipe['model']!r} but MODEL is {args.model!r}; the model comes "
                        f"from MODEL: give the same one or drop model from the recipe")
    if not timm.is_model(args.model):
        raise UserError(f'unknown model {args.model!r}; Astroformer models: '
                        f'{", ".join(timm.list_models("astroformer*"))} (or any timm model name)')
    img_size = recipe.get('img_size')
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise UserError(f'img_size must be a whole number of at least 1 (--img-size or the recipe), got {img_size!r}')
    try:  # the model's own size rules, on the meta device: costs nothing, fails before any data is read
        with torch.no_grad():
            timm.create_model(args.model, num_classes=tree.n_answers, device='meta')(
                torch.empty(2, 3, img_size, img_size, device='meta'))
    except (ValueError, RuntimeError, TypeError) as e:
        raise UserError(f'{args.model} cannot run at --img-size {img_size}: {" ".join(str(e).split())}') from None
    random_seed(train.seed)  # the initial weights too: the same command trains the same model
    model = timm.create_model(args.model, num_classes=tree.n_answers, drop_rate=train.drop,
                              drop_path_rate=train.drop_path)
    overrides = {'input_size': (3, img_size, img_size)}
    overrides.update({k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items()
                      if k in ('crop_pct', 'mean', 'std', 'interpolation') and v is not None})
    data_config = resolve_model_data_config(model, args=overrides)
    reader = reader_for_model(model)  # as evaluate and predict will read the trained model's images
    splits = info.get('splits') or {}
    train_set = VotesDataset(args.data, recipe.get('train_split', 'train'), tree, reader=reader)
    val_split = recipe.get('val_split', 'validation')
    val_set = None if splits and val_split not in splits else VotesDataset(args.data, val_split, tree, reader=reader)
    extra = {'task': 'votes', 'tree': tree.to_dict(), 'model': args.model,
             'data_config': {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
             'vote_set': {'folder': str(train_set.root.resolve()), 'manifest_sha256': manifest_sha256(args.data)}}
    out = Path(args.out)
    checkpoint = out / CHECKPOINT
    state = None
    if args.resume:
        state = read_checkpoint(checkpoint)
        if state.get('task') != 'votes':
            raise UserError(f'{checkpoint}: not a checkpoint of train-votes (no "task": "votes"); resume it with '
                            f'the tool that wrote it')
        check_resumable(state, train, checkpoint)
        for key, what in (('model', 'MODEL'), ('data_config', 'the preprocessing (--img-size, mean, std, crop)'),
                          ('tree', 'the decision tree')):
            if _comparable(state.get(key)) != _comparable(extra[key]):
                shown = f' {state.get(key)!r} (now {extra[key]!r})' if key == 'model' else ''
                raise UserError(f'{checkpoint}: was trained with another {what}{shown}; resume with the same '
                                f'arguments and recipe')
        trained_on, now = state.get('vote_set') or {}, extra['vote_set']['manifest_sha256']
        if trained_on.get('manifest_sha256') != now:
            raise UserError(f"{checkpoint}: was trained on the vote set {trained_on.get('folder', '(not recorded)')} "
                            f"(manifest.csv sha256 {str(trained_on.get('manifest_sha256'))[:12]}), not on "
                            f"{args.data} ({now[:12]}); resume it with the vote set it was trained on")
    else:
        if out.is_dir() and (out / CHECKPOINT).exists():
            raise UserError(f'{out}: holds a run of train-votes ({CHECKPOINT}); continue it with --resume, or choose '
                            f'a new folder')
        if out.is_dir() and any(out.iterdir()):
            raise UserError(f'{out}: folder is not empty; choose a new or empty folder for the run')
        check_output_location(out)  # new or empty, and writable: a run folder is never replaced
    if train.batch_size > len(train_set):
        raise UserError(f'batch_size {train.batch_size} is more than the {len(train_set)} training galaxies: no '
                        f'batch would be complete; lower --batch-size')
    for dataset in (train_set, val_set) if val_set is not None else (train_set,):
        dataset.check_images()
    if val_set is not None:
        val_set.transform = create_transform(**data_config, is_training=False)
    total = train.epochs
    print(f'{PROG}: {args.model} ({tree.n_answers} outputs, the {tree.name} tree) on {len(train_set)} training '
          f'galaxies, {len(val_set) if val_set else 0} validation, {img_size} px, {total} epochs, lr {train.lr:.2e}, '
          f'{device}' + (f'; resuming after epoch {state["epoch"]}' if state else ''), flush=True)
    if state is not None and state['epoch'] >= total:
        print(f'all {total} epochs were trained: exporting the final weights again', flush=True)

    latest: Dict[str, Any] = {}  # the last validation's metrics per question, for summary.json

    def on_epoch_end(epoch: int, trained: torch.nn.Module, stats: Dict[str, float]) -> Dict[str, Any]:
        line = f"epoch {epoch:3d}/{total}  train loss {stats['train_loss']:.3f}"
        found: Dict[str, Any] = {}
        if val_set is not None:
            latest.update(_validation_metrics(trained, val_set, tree, train.batch_size, device, args.workers))
            found = {'val_loss': latest['val_loss'], 'val_fraction_mae': latest['val_fraction_mae']}
            mae = found['val_fraction_mae']
            line += f"  val loss {found['val_loss']:.3f}  val fraction MAE " + (f'{mae:.4f}' if mae is not None
                                                                                 else 'n/a')
        print(f"{line}  lr {stats['lr']:.2e}", flush=True)
        return found

    if state is None:
        out.mkdir(parents=True, exist_ok=True)
    try:
        result = train_classifier(model, train_set, train, data_config=data_config, num_classes=tree.n_answers,
                                  device=device, workers=args.workers, on_epoch_end=on_epoch_end,
                                  loss_fn=DirichletMultinomialLoss(tree), checkpoint=checkpoint,
                                  resume=checkpoint if state is not None else None, checkpoint_extra=extra)
    except KeyboardInterrupt:
        if checkpoint.exists():
            raise KeyboardInterrupt(f'the last finished epoch is in {checkpoint}: continue with the same command '
                                    f'and --resume') from None
        if state is None and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nothing finished: leave nothing behind
        raise

    # --- the export, reloaded and checked
    final = result.final_model.eval().cpu()
    last = result.history[-1] if result.history else {}
    metrics = {k: last[k] for k in ('val_loss', 'val_fraction_mae') if last.get(k) is not None}
    model_dir = export_votes_model(
        final, out / 'model', tree, data_config=data_config, metrics={**metrics, 'trained_epochs': len(result.history)},
        train_args={'model': args.model, **recipe, 'lr': train.lr}, overwrite=True,
        dataset=f'Galaxy Zoo volunteer votes ({tree.name} tree), Dirichlet-multinomial loss')
    reloaded = load_votes_model(f'local-dir:{model_dir}')
    images = torch.randn(4, *data_config['input_size'])
    with torch.no_grad():
        identical = torch.equal(final(images), reloaded(images))
    if not identical or not is_votes_model(reloaded) or \
            _comparable(reloaded.pretrained_cfg['tree']) != _comparable(tree.to_dict()):
        raise RuntimeError(f'the model reloaded from {model_dir} differs from the one trained (outputs, task or tree)')
    if val_set is not None and not latest:  # a finished run resumed: no epoch ran here
        latest.update(_validation_metrics(final, val_set, tree, train.batch_size, torch.device('cpu'), args.workers))
    summary = {'model': args.model, 'tree': tree.name, 'epochs': len(result.history), 'img_size': img_size,
               'train_galaxies': len(train_set), 'val_galaxies': len(val_set) if val_set else 0,
               'recipe': recipe, 'lr': train.lr, 'history': result.history, 'reload_identical': identical,
               'validation': latest.get('metrics')}
    with atomic_file(out / 'summary.json') as f:
        f.write(json.dumps(summary, indent=2) + '\n')
    mae = last.get('val_fraction_mae')
    print(f'\nexported to {model_dir} (config.json: "task": "votes", the {tree.name} tree; reloaded with identical '
          f'outputs)' + (f'; validation fraction MAE {mae:.4f}' if isinstance(mae, float) and math.isfinite(mae)
                         else ''))
    return summary


def _comparable(value: Any) -> Any:
    """JSON-like values with tuples as lists: what a checkpoint or config.json gives back compares equal."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    return [_comparable(v) for v in value] if isinstance(value, (list, tuple)) else value


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse(argv)

    def body() -> None:
        run(args)
    return run_command(PROG, body)


if __name__ == '__main__':
    sys.exit(main())
