"""Curation: what a sample says about itself (language, provenance; `annotate`, at render time) and the corpus-wide
judgement of content (`vlcorpus curate`: prose quality, personal data, NSFW, image duplicates, decontamination)."""
