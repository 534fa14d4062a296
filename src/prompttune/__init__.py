"""prompttune: learn prompts for frozen models.

    import prompttune
    report = prompttune.train("prompt-tuning", model="smollm2-135m", task="sst2",
                              data_dir="../shared/data", shots=32, out="runs/pt-sst2")
    predictor = prompttune.load("runs/pt-sst2")
    predictor.predict(["a gorgeous, witty film"])
"""

from .api import TrainReport, evaluate, evaluate_artifact, load, train
from .errors import PromptTuneError

__version__ = "0.1.0"
__all__ = ["PromptTuneError", "TrainReport", "__version__", "evaluate", "evaluate_artifact", "load", "train"]
