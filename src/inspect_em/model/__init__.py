"""Everything that touches a torch model: loading (``loading``, ``embedded``), hooks and activations
(``hooks``, ``activations``), projections (``projection``, ``capture``), steering (``steering``) and
vector interchange (``interop``). Never imports Inspect."""
