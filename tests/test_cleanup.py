"""Cleaning small-model prose: echoed headings, other sections, filler, repetition, cut-off sentences."""

from aigc.cleanup import clean_section, trim_to_sentence, words


def test_repeated_title_and_heading_are_removed():
    text = "## Causes of heat\n\nCauses of heat\n\nCities store heat in concrete. Trees cool streets."
    assert clean_section(text, title="Causes of heat") == "Cities store heat in concrete. Trees cool streets."


def test_stops_where_the_model_writes_another_section():
    text = "Concrete holds heat. Asphalt too.\n\n## Remedies\n\nPlant trees."
    assert clean_section(text, title="Causes", other_titles=["Remedies"]) == "Concrete holds heat. Asphalt too."


def test_chat_filler_and_outro_are_dropped():
    text = "Sure! Here is the section:\n\nParks cool cities. Water helps.\n\nI hope this helps!"
    assert clean_section(text, title="Parks") == "Parks cool cities. Water helps."


def test_repeated_sentences_and_phrase_loops_are_cut():
    text = ("Heat rises in cities. Heat rises in cities. Shade matters.\n\nHeat rises in cities. "
            "We need more trees and more trees and more trees and more trees and more trees now.")
    body = clean_section(text, title="x")
    assert body.count("Heat rises in cities.") == 1
    assert "Shade matters." in body
    assert body.count("more trees") <= 3


def test_a_sentence_nearly_repeating_an_earlier_one_is_dropped_parallel_facts_stay():
    from aigc.sections import _new_text

    text = ("The court had to evacuate Westminster Hall during the evening because of the lying in state. "
            "It was reported by an officer [note: note added] .\n\n"
            "The court had to evacuate Westminster Hall during the evening because of her lying in state [2]. "
            "In 2019, the company earned $5 million in revenue from its sales of bread abroad. "
            "In 2020, the company earned $7 million in revenue from its sales of bread abroad.")
    assert clean_section(text, title="x") == (
        "The court had to evacuate Westminster Hall during the evening because of the lying in state. It was "
        "reported by an officer.\n\nIn 2019, the company earned $5 million in revenue from its sales of bread abroad. "
        "In 2020, the company earned $7 million in revenue from its sales of bread abroad.")
    body = "In 2019, the firm earned five million dollars in revenue from its sales abroad."
    assert _new_text(body, "In 2019 the firm earned five million dollars in revenue from its many sales abroad. "
                           "Then it grew.") == "Then it grew."
    assert clean_section("城市热岛效应使城市比郊区更热。城市热岛效应使城市比郊区更热吗？", title="x").count("城市") == 4


def test_outline_titles_and_notes_as_labels_before_sentences_are_dropped():
    text = ("Overview: the city of Tartus is a port. Climate and Tourism: Located on the coast [1]. Geography: It lies "
            "north.\n\nNote 1: The historic centre is old. The ratio: 3 to 1 is common. Notes: more here.")
    assert clean_section(text, title="Overview", other_titles=["Climate and Tourism", "Geography"]) == (
        "The city of Tartus is a port. Located on the coast [1]. It lies north.\n\nThe historic centre is old. "
        "The ratio: 3 to 1 is common. More here.")


def test_a_placeholder_takes_the_ellipsis_after_it_along():
    assert clean_section("Bees fly. [Insert your opening paragraph] ... Then more.", title="X") == "Bees fly. Then more."


def test_notes_left_in_brackets_and_a_stray_comma_are_removed():
    text = ("Votes decided the top 16. [Note: First number is not present as it should be; instead, use an apostrophe "
            "with no spaces.] It ended. [Miscellaneous note: Sending off the island was allowed.] It was held in "
            "January. , The winner was crowned.")
    assert clean_section(text, title="X") == ("Votes decided the top 16. It ended. It was held in January. The winner "
                                              "was crowned.")


def test_labels_after_a_completions_leading_space_or_in_bold_and_echoed_delimiters_are_dropped():
    assert clean_section(" Early life and education: Williams was born in 1953 [1]. He moved.",
                         title="Early life and education") == "Williams was born in 1953 [1]. He moved."
    assert clean_section("**Personal life:** He married twice.", title="X", other_titles=["Personal life"]) == (
        "He married twice.")
    assert clean_section(" Section 2 In the early years he acted.", title="X") == "In the early years he acted."
    assert clean_section("<<Title: Storm Mocha>> The storm formed in May.", title="X") == "The storm formed in May."


def test_list_numbers_run_into_the_prose_are_removed():
    text = "Tartus has roads [3]. 2. The ruins of Tyre are in Lebanon. 3. The name comes from Greek. It is old. 4."
    assert clean_section(text, title="X") == ("Tartus has roads [3]. The ruins of Tyre are in Lebanon. The name comes "
                                              "from Greek. It is old.")
    assert clean_section("The vote was 5 to 2. Then it ended.", title="X") == "The vote was 5 to 2. Then it ended."


def test_a_place_in_the_outline_before_a_sentence_is_dropped():
    text = "Section 1 The story of Darya is long. Part 2 Then it ended.\n\nSection 230 Of the act stands. Section 23 of it too."
    assert clean_section(text, title="X") == ("The story of Darya is long. Then it ended.\n\nSection 230 Of the act "
                                              "stands. Section 23 of it too.")


def test_a_link_into_the_contents_copied_by_the_model_is_removed():
    text = "[Section Two](#section-two) Climate change is here. See [the report](https://example.org) too."
    assert clean_section(text, title="x") == "Climate change is here. See [the report](https://example.org) too."


def test_a_broken_start_of_one_function_word_is_dropped():
    text = "The court declined to hear his case. The. In June 2022, an MP asked for money. A. The end is near."
    assert clean_section(text, title="X") == ("The court declined to hear his case. In June 2022, an MP asked for "
                                              "money. The end is near.")


def test_a_section_without_a_sentence_end_ends_with_a_full_stop():
    from aigc.cleanup import trim_to_sentence

    text = "Benefits of green spaces – how they help; Challenges facing cities today; Futures ahead;"
    assert clean_section(text, title="x") == text[:-1] + "."
    assert trim_to_sentence("城市热岛效应，") == "城市热岛效应。" and trim_to_sentence("") == ""


def test_text_cut_by_the_token_limit_ends_on_a_sentence():
    assert clean_section("One full sentence. Another one that was cut", title="t", truncated=True) == "One full sentence."
    assert trim_to_sentence('He said "yes." Then') == 'He said "yes."'


def test_word_count():
    assert words("Urban heat-islands aren't new.") == 4


def test_fit_length_cuts_at_the_sentence_end_nearest_the_target():
    from aigc.cleanup import fit_length

    text = "One two three four five. Six seven eight nine ten.\n\nEleven twelve thirteen fourteen fifteen. Sixteen."
    assert fit_length(text, 10) == "One two three four five. Six seven eight nine ten."
    assert fit_length(text, 14) == text  # 16 words is within 25% of 14
    assert fit_length(text, 12) == "One two three four five. Six seven eight nine ten."  # 10 is nearer 12 than 15
    assert fit_length("Short text here.", 10) == "Short text here."
    long_one = "Word " * 40 + "end."
    assert fit_length(long_one, 10) == long_one  # no sentence end to cut at: left whole


def test_meta_sentences_and_stray_quotes_from_the_real_model():
    text = ('Here is your paragraph written with no formatting (bold text) that describes what you can edit. '
            '"This essay explores how rising sea levels pose threats to settlements. Coastal erosion matters."')
    assert clean_section(text, title="Impact") == (
        "This essay explores how rising sea levels pose threats to settlements. Coastal erosion matters."
    )
    quoted = '"coastal erosion is one of nature\'s many challenges." As we explore this balance, it shows.'
    assert clean_section(quoted, title="Overview") == quoted.replace('"coastal', '"Coastal')
    assert clean_section('Sure! Waves move sand along the shore. "Tides too."', title="x") == 'Waves move sand along the shore. "Tides too."'


def test_copied_placeholders_and_long_dot_runs_are_removed():
    text = "[Section_title] How to stay warm... [your_paragraphs_without-bold]... Wear layers..... It helps."
    assert clean_section(text, title="Warmth") == "How to stay warm... Wear layers... It helps."


def test_instructions_in_brackets_and_the_prompts_delimiters_are_removed_a_name_to_fill_in_stays():
    # the requests benchmark (issue 19): a 100-word piece and a continuation step that echoed "<<<"
    text = ("Languages open doors at any age. [Insert your opening paragraph] Start small.\n\n"
            "<<< Practise every day. >>> Ask [Your Name] for the notes.")
    assert clean_section(text, title="Languages") == ("Languages open doors at any age. Start small.\n\n"
                                                      "Practise every day. Ask [Your Name] for the notes.")


def test_title_like_lines_standing_alone_are_dropped():
    # the real embedded model behind `transformers serve` opened each section with a mixed-up title
    text = ("The Unsustainable Future of Urban Heat Insulation: A New Era of Sustainability\n\n"
            "The impact of urban heat islands is a pressing concern.\n\nWhat Comes Next\n\nCities plant trees.")
    assert clean_section(text, title="The Impact") == "The impact of urban heat islands is a pressing concern.\n\nCities plant trees."
    assert clean_section("The Unsustainable Future of Urban Heat Insulation", title="x") == ""


def test_section_echo_without_colon_and_assistant_chatter():
    # seen from the embedded model behind `transformers serve` (chat endpoint, no prefill)
    assert clean_section("Section 1 Impact of Heat on Buildings\n\nWalls store heat.", title="Impact of Heat on Buildings") == "Walls store heat."
    text = "The article has a clear structure. I'm ready to begin. Please go ahead and begin by writing a section."
    assert clean_section(text, title="x") == "The article has a clear structure."
