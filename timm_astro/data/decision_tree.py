"""A Galaxy Zoo decision tree as data: its questions, their answers and which answer leads to each question.

Galaxy Zoo labels are volunteers' votes on a tree of questions: a later question is asked only of volunteers who
gave a particular earlier answer (GZ2's "edge-on?" only after "features or disk"). Models predict one output per
answer, in the tree's order; the loss and the metrics need to know which outputs form a question. The tree is a
JSON file, so another survey's tree (GZ DECaLS, GZ Evo) is a new file, not new code:

    {"name": "...", "description": "...",
     "questions": [{"name": "t01_smooth_or_features", "text": "Is the galaxy simply smooth ...?", "parent": null,
                    "answers": [{"name": "t01_smooth_or_features_a01_smooth", "text": "Smooth",
                                 "column": "t01_smooth_or_features_a01_smooth_count"}, ...]}, ...]}

``parent`` names the answer that leads to the question (null: asked of every galaxy); answer names are unique
across the tree, and ``column`` is the vote-count column of that answer in a manifest. One parent per question, as
in Zoobot (Walmsley et al. 2022). Shipped trees: ``gz2`` (Willett et al. 2013, questions t01-t09).
"""
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from timm_astro.errors import UserError

__all__ = ['Answer', 'Question', 'DecisionTree', 'SHIPPED_TREES', 'load_tree', 'tree_from_dict']

SHIPPED_TREES = ('gz2',)
_TREE_KEYS = {'name', 'description', 'questions'}
_QUESTION_KEYS = {'name', 'text', 'parent', 'answers'}
_ANSWER_KEYS = {'name', 'text', 'column'}


@dataclass(frozen=True)
class Answer:
    name: str
    text: str
    column: str  # its vote-count column in a manifest


@dataclass(frozen=True)
class Question:
    name: str
    text: str
    answers: Tuple[Answer, ...]
    parent: Optional[str]  # the answer that leads to this question; None: asked of every galaxy


class DecisionTree:
    """A validated tree; its answers, in order, are the model's outputs (``answers``, ``columns``, ``slices``)."""

    def __init__(self, name: str, questions: Sequence[Question], description: str = ''):
        self.name, self.description, self.questions = name, description, tuple(questions)
        self.answers: Tuple[Answer, ...] = tuple(a for q in self.questions for a in q.answers)
        self.slices: Tuple[slice, ...] = ()  # the outputs of each question
        start = 0
        for q in self.questions:
            self.slices += (slice(start, start + len(q.answers)),)
            start += len(q.answers)
        # for each answer, the index of its question (the loss sums answers into questions with it)
        self.question_index: Tuple[int, ...] = tuple(i for i, q in enumerate(self.questions) for _ in q.answers)

    @property
    def answer_names(self) -> List[str]:
        return [a.name for a in self.answers]

    @property
    def columns(self) -> List[str]:
        return [a.column for a in self.answers]

    @property
    def n_answers(self) -> int:
        return len(self.answers)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form ``tree_from_dict`` reads (what a model's config.json and checkpoints record)."""
        return {'name': self.name, 'description': self.description, 'questions': [
            {'name': q.name, 'text': q.text, 'parent': q.parent,
             'answers': [{'name': a.name, 'text': a.text, 'column': a.column} for a in q.answers]}
            for q in self.questions]}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DecisionTree) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f'DecisionTree({self.name!r}, {len(self.questions)} questions, {self.n_answers} answers)'


def _text(value: Any, what: str, source: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f'{source}: {what} is {value!r}; expected a non-empty string')
    return value


def _object(value: Any, allowed: set, required: Sequence[str], what: str, source: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise UserError(f'{source}: {what} is a {type(value).__name__}; expected a JSON object with '
                        f'{", ".join(required)}')
    unknown = sorted(set(value) - allowed)
    if unknown:  # a misspelt "parent" would silently make a question asked of every galaxy
        raise UserError(f'{source}: {what} has unknown keys {", ".join(unknown)}; expected only '
                        f'{", ".join(sorted(allowed))}')
    missing = [k for k in required if k not in value]
    if missing:
        raise UserError(f'{source}: {what} has no {", ".join(missing)}')
    return value


def _duplicates(names: Sequence[str]) -> List[str]:
    seen, repeated = set(), []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    return repeated


def tree_from_dict(data: Any, source: str = 'the tree') -> DecisionTree:
    """Validate the JSON form of a tree (see the module docstring) and build it; ``source`` names it in errors."""
    data = _object(data, _TREE_KEYS, ['name', 'questions'], 'the tree', source)
    name = _text(data['name'], 'the tree name', source)
    description = data.get('description', '')
    if not isinstance(description, str):
        raise UserError(f'{source}: description is {description!r}; expected a string')
    if not isinstance(data['questions'], list) or not data['questions']:
        raise UserError(f'{source}: questions is {data["questions"]!r}; expected a non-empty list of questions')
    questions: List[Question] = []
    for i, q in enumerate(data['questions'], start=1):
        q = _object(q, _QUESTION_KEYS, ['name', 'answers'], f'question {i}', source)
        q_name = _text(q['name'], f'the name of question {i}', source)
        where = f'question {q_name!r}'
        if not isinstance(q['answers'], list) or len(q['answers']) < 2:
            count = len(q['answers']) if isinstance(q['answers'], list) else q['answers']
            raise UserError(f'{source}: {where} has {count!r} answers; expected a list of at least 2 (a question '
                            f'with one answer carries no information)')
        answers = []
        for j, a in enumerate(q['answers'], start=1):
            a = _object(a, _ANSWER_KEYS, ['name', 'column'], f'answer {j} of {where}', source)
            a_name = _text(a['name'], f'the name of answer {j} of {where}', source)
            answers.append(Answer(a_name, _text(a.get('text', a_name), f'the text of answer {a_name!r}', source),
                                  _text(a['column'], f'the column of answer {a_name!r}', source)))
        parent = q.get('parent')
        if parent is not None:
            parent = _text(parent, f'the parent of {where}', source)
        questions.append(Question(q_name, _text(q.get('text', q_name), f'the text of {where}', source),
                                  tuple(answers), parent))

    for what, names in (('question names', [q.name for q in questions]),
                        ('answer names', [a.name for q in questions for a in q.answers]),
                        ('answer columns', [a.column for q in questions for a in q.answers])):
        repeated = _duplicates(names)
        if repeated:
            raise UserError(f'{source}: duplicate {what}: {", ".join(repeated)}; each must be unique in the tree')
    owner = {a.name: q for q in questions for a in q.answers}  # answer -> its question
    for q in questions:
        if q.parent is not None and q.parent not in owner:
            raise UserError(f'{source}: the parent of question {q.name!r} is {q.parent!r}, which is no answer of '
                            f'this tree; expected an answer name or null (asked of every galaxy)')
    for q in questions:  # each question has one parent, so following parents either ends at a root or loops
        path, current = [q.name], q
        while current.parent is not None:
            current = owner[current.parent]
            if current.name in path:
                loop = ' -> '.join(path[path.index(current.name):] + [current.name])
                raise UserError(f'{source}: the questions form a cycle ({loop}, following parent answers); '
                                f'expected a tree whose parents lead back to a question asked of every galaxy')
            path.append(current.name)
    return DecisionTree(name, questions, description)


def load_tree(name_or_path: Union[str, os.PathLike, DecisionTree]) -> DecisionTree:
    """A shipped tree by name (``'gz2'``) or a user's JSON file; a DecisionTree is returned as it is."""
    if isinstance(name_or_path, DecisionTree):
        return name_or_path
    text_form = str(name_or_path)
    if text_form in SHIPPED_TREES:
        resource = resources.files('timm_astro.data').joinpath('trees', f'{text_form}.json')
        return tree_from_dict(json.loads(resource.read_text(encoding='utf-8')), f'the shipped tree {text_form!r}')
    path = Path(name_or_path)
    if not path.is_file():
        state = 'is a folder' if path.is_dir() else 'no such file'
        raise UserError(f'tree {text_form!r}: {state}; expected a shipped tree ({", ".join(SHIPPED_TREES)}) or a '
                        f'JSON file describing one')
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f'{path}: not valid JSON ({e}); expected a decision tree (questions, answers, parents)') \
            from None
    return tree_from_dict(data, str(path))
