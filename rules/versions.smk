# One named target per version, so `snakemake version_<name>` builds everything of that version
# (and nothing of the others). The rules are generated from config, so each one's name is fixed
# at parse time and `snakemake --list-target-rules` shows them.
for version_name in VERSIONS:

    rule:
        name:
            f"version_{version_name}"
        input:
            get_version_outputs(version_name),
        localrule: True
