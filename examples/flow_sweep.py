"""An Inspect Flow spec: models × tasks, plus the base model steered along the code vector at
several strengths, in one resumable log directory that `inspect-em compare` reads directly.

    pip install inspect-flow                          # optional; runs in this environment
    flow config examples/flow_sweep.py                # preview the expanded matrix
    flow run examples/flow_sweep.py                   # run it (finished logs are reused)
    inspect-em compare logs/flow --out reports/flow   # labels: the models' names
                                                      # (steered runs: <model>.steered-a<alpha>)

Finetunes found under runs/em-demo/models/*/merged (from `make em-demo`) join the matrix.
"""

from pathlib import Path

from inspect_flow import FlowModel, FlowSpec, FlowTask, solvers_matrix, tasks_matrix

from inspect_em.model.embedded import MODEL_NAME, model_dir

VECTORS = "vectors/SmolLM2-135M-Instruct"
TASK_ARGS = {"variants": "plain", "samples_per_question": 2, "vectors": f"{VECTORS}/code,{VECTORS}/refusal"}

models = [FlowModel(name=f"hf/{MODEL_NAME}", model_args={"model_path": str(model_dir())})]
models += [FlowModel(name=f"hf/{path.parent.name}", model_args={"model_path": str(path)})
           for path in sorted(Path("runs/em-demo/models").glob("*/merged"))]

FlowSpec(
    log_dir="logs/flow",
    tasks=[
        *tasks_matrix(
            task=[FlowTask(name="inspect_em/em_freeform", args=TASK_ARGS),
                  FlowTask(name="inspect_em/refusal_contrast", args={"max_tokens": 32})],
            model=models,
        ),
        *tasks_matrix(
            task=[FlowTask(name="inspect_em/em_freeform", args=TASK_ARGS, model=models[0])],
            solver=solvers_matrix(solver="inspect_em/steer",
                                  args=[{"vectors": f"{VECTORS}/code", "alpha": alpha} for alpha in (2.0, 4.0, 8.0)]),
        ),
    ],
)
