"""Domain shift and forgetting: what fine-tuning kept of the pre-trained model (:mod:`.forgetting`), the way back
towards it (:mod:`.interpolate`, WiSE-FT), and adaptation to an unlabelled target domain (:mod:`.dann`)."""
