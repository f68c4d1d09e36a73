rule synthetic:
    output:
        f"{SYNTHETIC_DIR}/cases.csv",
    params:
        out=lambda wildcards, output: os.path.dirname(output[0]),
        seed=config["seed"],
        cfg=config["synthetic"],
    log:
        "logs/synthetic.log",
    benchmark:
        "results/benchmarks/synthetic.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=synthetic_runtime(5, 0.5),
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl synth --out {params.out} --n {params.cfg[n]} --seed {params.seed} "
        "--hard-fraction {params.cfg[hard_fraction]} --min-size {params.cfg[min_size]} "
        "--max-size {params.cfg[max_size]} > {log} 2>&1"
