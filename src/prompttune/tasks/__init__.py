"""Tasks: data, templates, verbalizers or targets, few-shot sampling and metrics."""

from .builtin_generative import builtin_task_families
from .examples import Example
from .metrics import accuracy, macro_f1
from .spec import GenerationSpec, MetricSpec, TaskSpec, parse_task_yaml
from .task import FewShot, Task, builtin_tasks, load_spec, load_task, task_is_generative

__all__ = ["Example", "FewShot", "GenerationSpec", "MetricSpec", "Task", "TaskSpec", "accuracy",
           "builtin_task_families", "builtin_tasks", "load_spec", "load_task", "macro_f1", "parse_task_yaml",
           "task_is_generative"]
