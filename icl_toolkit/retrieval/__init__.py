"""Which patients are shown as demonstrations.

- :mod:`~icl_toolkit.retrieval.config`: :class:`RetrievalConfig` (how many, chosen how, by which retriever);
- :mod:`~icl_toolkit.retrieval.embedder`: the profile embedder (MiniLM) and a hashing embedder for tests;
- :mod:`~icl_toolkit.retrieval.representations`: what "similar" means (dense, sparse, hybrid, prognostic);
- :mod:`~icl_toolkit.retrieval.index`: the persisted faiss index of a demonstration pool and its metadata;
- :mod:`~icl_toolkit.retrieval.retriever`: selection strategies and leakage guards (:class:`Retriever`);
- :mod:`~icl_toolkit.retrieval.cache`: saved retrievals, reused across runs and models.
"""
