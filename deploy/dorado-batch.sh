#!/bin/sh
# Basecall one bcmanager batch with Dorado. The agent's command template:
#   dorado-batch.sh {input_dir} {output_dir} MODEL [more `dorado basecaller` options]
# Dorado reads the batch's folder of POD5 links and every read goes to OUTPUT/pass/reads.fastq,
# which the manager renames job_id_<jobid>_reads.fastq once the job is done. A failed Dorado
# fails the job (its exit code is this script's). DORADO names the binary if it is not on PATH.
set -eu
input_dir=$1
output_dir=$2
shift 2
mkdir -p "$output_dir/pass"
exec "${DORADO:-dorado}" basecaller "$@" "$input_dir" --emit-fastq >"$output_dir/pass/reads.fastq"
