"""Training: recipes, data preparation, and one stage per trained part (speech expert, text expert, router, acoustic
LM, duration predictor, codec), each saving its final model in its folder and its checkpoints apart (`stages`)."""
