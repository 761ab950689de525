# evalcluster's demo dataset: 50 small integer-answer arithmetic word problems
# (`python -m eval_jobs.demo_dataset` writes the data file). Same shape as AISBench's
# aime2025_gen_0_shot_chat_prompt: the same dataset class (a plain {"question", "answer"} JSONL reader),
# the same one-turn prompt, MATHEvaluator v2 + math_postprocess_v2,
# so a demo run goes through the real AISBench rendering and scoring path. No read_base() imports: absolute
# ones need pkg_resources, which setuptools >= 81 no longer ships.
from ais_bench.benchmark.openicl.icl_prompt_template import PromptTemplate
from ais_bench.benchmark.openicl.icl_retriever import ZeroRetriever
from ais_bench.benchmark.openicl.icl_inferencer import GenInferencer
from ais_bench.benchmark.datasets import (
    Aime2025Dataset,
    MATHEvaluator,
    math_postprocess_v2,
)


demo_arith_reader_cfg = dict(input_columns=["question"], output_column="answer")


demo_arith_infer_cfg = dict(
    prompt_template=dict(
        type=PromptTemplate,
        template=dict(
            round=[
                dict(
                    role="HUMAN",
                    prompt="{question}\nRemember to put your final answer within \\boxed{}.",
                ),
            ],
        ),
    ),
    retriever=dict(type=ZeroRetriever),
    inferencer=dict(type=GenInferencer),
)

demo_arith_eval_cfg = dict(
    evaluator=dict(type=MATHEvaluator, version="v2"),
    pred_postprocessor=dict(type=math_postprocess_v2),
)

demo_arith_datasets = [
    dict(
        abbr="demo_arith",
        type=Aime2025Dataset,
        path="ais_bench/datasets/demo_arith/demo_arith.jsonl",
        reader_cfg=demo_arith_reader_cfg,
        infer_cfg=demo_arith_infer_cfg,
        eval_cfg=demo_arith_eval_cfg,
    )
]
